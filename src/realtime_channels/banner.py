"""What ``serve`` prints when it runs on the development secret: the keys and a client snippet."""

from __future__ import annotations

import time

from .auth import mint_token
from .config import Settings

#: Printed development keys live for ten years, like the keys `supabase start` prints.
DEV_KEY_SECONDS = 10 * 365 * 24 * 3600


def client_snippet(url: str, key: str) -> str:
    """A supabase-js program that runs verbatim on Node 20 and 22 (``npm install
    @supabase/supabase-js ws``, save as ``room1.mjs``).  Node 20 has no WebSocket of its own,
    so the ``ws`` package is passed as the transport; Node 22 accepts it too."""
    return f"""\
import {{ createClient }} from '@supabase/supabase-js'
import ws from 'ws'

const supabase = createClient('{url}', '{key}', {{ realtime: {{ transport: ws }} }})
supabase.channel('room1')
  .on('broadcast', {{ event: '*' }}, (message) => console.log('broadcast', message.payload))
  .subscribe((status) => console.log(status))
"""


def dev_banner(settings: Settings, port: int) -> str:
    secret = settings.effective_jwt_secret
    assert secret is not None
    now = time.time()
    anon = mint_token(secret, "anon", now=now, exp_seconds=DEV_KEY_SECONDS)
    service = mint_token(secret, "service_role", now=now, exp_seconds=DEV_KEY_SECONDS)
    url = f"http://{settings.host}:{port}"
    snippet = "".join(f"  {line}\n" if line else "\n" for line in client_snippet(url, anon).splitlines())
    return f"""
WARNING: no REALTIME_JWT_SECRET or REALTIME_JWT_JWKS set: using the built-in DEVELOPMENT secret.
Anyone can mint tokens for this server. Never expose it beyond your machine like this.

  anon key:         {anon}
  service_role key: {service}

Try it from Node.js (npm install @supabase/supabase-js ws; save as room1.mjs; node room1.mjs):

{snippet}"""
