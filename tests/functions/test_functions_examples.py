"""examples/functions: the edge-function example (a client broadcasts `message`, a function
answers with `response`) with the example Python function and the example HTTP function."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from fnsupport import HERE, SECRET, Published, wait_for

from realtime_channels.functions import FunctionsEngine, RealtimeEvent, load_config

EXAMPLES = HERE.parent.parent / "examples" / "functions"


def _http_function_module() -> Any:
    spec = importlib.util.spec_from_file_location("example_http_function", EXAMPLES / "http_function.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_example_flow_python_and_http(tmp_path: Path) -> None:
    app = _http_function_module().make_app(SECRET)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    text = (EXAMPLES / "functions.toml").read_text(encoding="utf-8")
    text = text.replace("http://127.0.0.1:8787/respond", f"http://127.0.0.1:{port}/respond")
    text = text.replace('python_path = ["."]', f'python_path = ["{EXAMPLES}"]')
    config = tmp_path / "functions.toml"
    config.write_text(text, encoding="utf-8")

    published = Published()
    engine = FunctionsEngine(load_config(str(config)), secret=SECRET, service_role_key=None, publish=published)
    await engine.start()
    try:
        claims = {"sub": "user-1", "role": "authenticated"}
        engine.observe(RealtimeEvent("broadcast", "room:lobby", "message", {"text": "hello"}, claims))
        engine.observe(RealtimeEvent("broadcast", "edge:lobby", "message", {"text": "from the edge"}, claims))
        await wait_for(lambda: len(published.items) == 2, what="both functions to answer")
    finally:
        await engine.stop()
        await runner.cleanup()
    by_topic = {topic: (event, payload) for topic, event, payload in published.items}
    assert by_topic["room:lobby"][0] == "response" and by_topic["edge:lobby"][0] == "response"
    assert by_topic["room:lobby"][1]["reply"] == "HELLO" and by_topic["room:lobby"][1]["to"] == "user-1"
    assert by_topic["edge:lobby"][1]["reply"] == "FROM THE EDGE"
    assert engine.metrics()["respond-http"]["delivered"] == 1


async def test_example_http_function_refuses_unsigned_requests() -> None:
    app = _http_function_module().make_app(SECRET)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    import aiohttp

    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/respond", json={"id": "x", "payload": {}}) as resp:
                assert resp.status == 401
    finally:
        await runner.cleanup()
