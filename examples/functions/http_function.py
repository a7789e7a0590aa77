"""The same function over HTTP (what a Supabase Edge Function would do).

    REALTIME_FUNCTIONS_SECRET=whsec_... .venv/bin/python examples/functions/http_function.py [--port 8787]

Checks the Standard Webhooks signature, processes the message and answers with a JSON body the
engine turns into a broadcast of `response` on the triggering channel.  Deliveries are at least
once: the `webhook-id` header (also the event's `id`) identifies retries of the same event.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from respond import process  # noqa: E402  (same processing as the Python function)

from realtime_channels.functions.signing import parse_secret, verify  # noqa: E402


def make_app(secret: str | None) -> web.Application:
    key = parse_secret(secret) if secret else None

    async def respond(request: web.Request) -> web.Response:
        body = await request.read()
        if key is not None and not verify(key, request.headers, body, time.time()):
            return web.json_response({"error": "bad signature"}, status=401)  # 4xx: not retried
        event = await request.json()
        response = process(event["payload"], event.get("claims"))
        response["in_reply_to"] = event["id"]
        return web.json_response({"broadcast": {"event": "response", "payload": response}})

    app = web.Application()
    app.router.add_post("/respond", respond)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8787)
    args = p.parse_args()
    web.run_app(make_app(os.environ.get("REALTIME_FUNCTIONS_SECRET")), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
