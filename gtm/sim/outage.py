"""A simulated fleet that really dies: ``POST /_sim/kill {"for_s": N}``.

The unplanned path of a drill (``gtm drill kill``): the fleet answers ``202 {"back_at": unix_s}``,
then stops listening (new connections are refused) and aborts every open connection (clients in
the middle of an answer see a reset), and comes back by itself ``for_s`` seconds later on the
same host and port — nobody could reach it to bring it back. The process lives on meanwhile, so
its state and counters (``completions_served`` ...) keep counting across the outage.

A fleet that is not a gtm simulator answers 404 on this path, which a drill reads as "not a
fleet gtm runs". An app served without :class:`Outage` registered (not started by
``start_fleet``) answers 501.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

from aiohttp import web

from gtm.log import get_logger

log = get_logger("sim.outage")

__all__ = ["MAX_KILL_S", "MIN_KILL_S", "OUTAGE_KEY", "Outage", "kill_handler"]

MIN_KILL_S = 1.0
"""Shortest outage ``/_sim/kill`` accepts, seconds."""
MAX_KILL_S = 3600.0
"""Longest outage ``/_sim/kill`` accepts, seconds."""
REBIND_RETRY_S = 0.2
"""How often a fleet coming back retries a port another program holds, seconds."""


@dataclass
class Outage:
    """Kills and revives the listening site of one fleet's runner.

    Attributes:
        runner: the fleet's aiohttp runner (set up).
        host: the address the fleet listens on.
        port: the port it listens on (the bound one, never 0).
        down_until: monotonic time the fleet comes back, or 0.0 while it is up.
    """

    runner: web.AppRunner
    host: str
    port: int
    down_until: float = 0.0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start_site(self) -> None:
        """Listen on ``host:port`` (reusing the address, as the first start did).

        Raises:
            OSError: the address cannot be bound.
        """
        site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
        await site.start()

    @property
    def down(self) -> bool:
        """Whether the fleet is down now (killed and not back yet)."""
        return self._task is not None and not self._task.done()

    def kill(self, for_s: float, keep: asyncio.BaseTransport | None = None) -> float:
        """Die now and come back after ``for_s`` seconds; returns the unix time of the return.

        Args:
            for_s: the outage, seconds (``MIN_KILL_S``..``MAX_KILL_S``).
            keep: a connection closed gracefully instead of aborted (the one that asked, so it
                still receives its 202).

        Raises:
            ValueError: ``for_s`` out of range, or the fleet is already down.
        """
        if not MIN_KILL_S <= for_s <= MAX_KILL_S:
            raise ValueError(f"for_s must be within {MIN_KILL_S:g}..{MAX_KILL_S:g} seconds")
        if self.down:
            raise ValueError("the fleet is already down")
        self.down_until = time.monotonic() + for_s
        self._task = asyncio.create_task(self._down(for_s, keep), name=f"sim-outage-{self.port}")
        return time.time() + for_s

    async def _down(self, for_s: float, keep: asyncio.BaseTransport | None) -> None:
        try:
            for site in list(self.runner.sites):
                await site.stop()
            server = self.runner.server
            for handler in list(server.connections) if server is not None else []:
                transport = handler.transport
                if transport is None:
                    continue
                if transport is keep:
                    transport.close()  # flushes the 202, then closes
                else:
                    transport.abort()
            log.warning("kill: fleet on %s:%d down for %.1f s", self.host, self.port, for_s)
            await asyncio.sleep(max(0.0, self.down_until - time.monotonic()))
            while True:
                try:
                    await self.start_site()
                    break
                except OSError as exc:
                    log.warning("kill: cannot listen on %s:%d again (%s); retrying", self.host, self.port, exc)
                    await asyncio.sleep(REBIND_RETRY_S)
            log.warning("kill: fleet on %s:%d is back", self.host, self.port)
        finally:
            self.down_until = 0.0

    async def close(self) -> None:
        """Cancel a pending revival (the fleet is shutting down)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


OUTAGE_KEY: web.AppKey[Outage] = web.AppKey("outage", Outage)


async def kill_handler(request: web.Request) -> web.Response:
    """``POST /_sim/kill {"for_s": N}``: 202 ``{"back_at": unix_s, "for_s": N}``, then die (400 on a
    bad body, 409 while already down, 501 when the app cannot be killed)."""
    outage = request.app.get(OUTAGE_KEY)
    if outage is None:
        return web.json_response({"error": "this fleet was not started by start_fleet: it cannot die"}, status=501)
    try:
        body = await request.json()
        if not isinstance(body, dict) or set(body) - {"for_s"} or "for_s" not in body:
            raise ValueError('body must be {"for_s": seconds}')
        value = body["for_s"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("for_s must be a number of seconds")
        for_s = float(value)
        if not MIN_KILL_S <= for_s <= MAX_KILL_S:
            raise ValueError(f"for_s must be within {MIN_KILL_S:g}..{MAX_KILL_S:g} seconds")
    except (ValueError, json.JSONDecodeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    if outage.down:
        return web.json_response({"error": "the fleet is already down"}, status=409)
    back_at = time.time() + for_s
    resp = web.json_response({"back_at": round(back_at, 3), "for_s": for_s}, status=202,
                             headers={"Connection": "close"})
    await resp.prepare(request)
    await resp.write_eof()  # the answer is on its way before the fleet dies
    outage.kill(for_s, keep=request.transport)
    return resp
