"""The scrape deadline is for the server's answer: parsing a large exposition afterwards is the
agent's own work and must not make a server that answered in time look hung (real HTTP)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from gtm.agent.scrape import Exposition, parse_exposition, scrape_source
from gtm.models.region import FleetSource

# ~0.5 MB of vLLM-shaped series: served in milliseconds, parsed in about half a second.
BIG = "# TYPE vllm:num_requests_waiting gauge\n" + "".join(
    f'vllm:num_requests_waiting{{model_name="m",engine="{i}"}} 1\n' for i in range(8_000)
)


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=BIG)

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_parsing_after_the_answer_does_not_count_against_the_deadline(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parse is made slower than the deadline on purpose (the real parse, then a sleep in its
    thread), so the outcome does not depend on how fast this machine parses at the moment."""
    async with aiohttp.ClientSession() as session:  # the server's answer alone, not parsed
        t0 = time.monotonic()
        async with session.get(f"{server}/metrics") as resp:
            await resp.text()
        answer_s = time.monotonic() - t0
    timeout = max(1.0, 10 * answer_s)  # met by the server's answer with a wide margin
    extra_s = timeout + 0.3  # missed by answer + parse

    def slow_parse(text: str) -> Exposition:
        exp = parse_exposition(text)
        time.sleep(extra_s)
        return exp

    monkeypatch.setattr("gtm.agent.scrape.parse_exposition", slow_parse)
    src = FleetSource(name="vllm-a", kind="vllm", url=server, replicas=1)
    async with aiohttp.ClientSession() as session:
        res = await scrape_source(session, src, timeout)
    assert res.reasons == [] and res.up and res.health_ok
    assert res.engine is not None and res.engine.waiting == 8_000
    assert res.latency_ms / 1000 > timeout  # the whole scrape took longer than the deadline
