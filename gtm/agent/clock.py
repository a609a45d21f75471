"""The agent's clock against the Redis server's: measured, reported, warned about.

The controller rejects a report timestamped more than the policy's ``max_clock_skew_s`` ahead
of the Redis server's ``TIME`` (``gtm.engine.plausibility``). So that an operator sees why
before it happens, each agent measures its own skew (agent clock minus Redis clock, seconds)
at start and every ``clock_check_s``, reports it in ``FleetReport.clock_skew_s``, and logs a
warning when it exceeds the bound.

One measurement: agent time ``t0`` before ``TIME``, ``t1`` after; the server's reading is
taken to be from the midpoint, so the skew is ``(t0 + t1) / 2 − server`` with an uncertainty
of ``(t1 − t0) / 2`` (half the round trip).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from gtm.errors import StoreError
from gtm.log import get_logger
from gtm.store.store import Store

log = get_logger("agent.clock")


def skew_from(t0: float, t1: float, server: float) -> float:
    """Agent clock minus server clock, seconds, from agent times ``t0``/``t1`` (unix seconds)
    taken just before and after the server read its clock (``server``, unix seconds)."""
    return (t0 + t1) / 2.0 - server


class ClockSkew:
    """Measures and remembers this agent's clock skew against Redis.

    Args:
        store: the Redis store (``Store.server_time``).
        region: the agent's region, for the log.
        bound_s: skew (either sign) above which a warning is logged, seconds.

    Attributes:
        skew_s: agent clock minus Redis clock, seconds, from the last good measurement; None
            before the first.
    """

    def __init__(self, store: Store, region: str, bound_s: float) -> None:
        self.store = store
        self.region = region
        self.bound_s = bound_s
        self.skew_s: float | None = None
        self._warned = False

    async def measure(self) -> float:
        """Measure once; returns (and remembers) the skew, seconds.

        Raises:
            StoreError: Redis could not be read (the last measurement is kept).
        """
        t0 = time.time()
        server = await self.store.server_time()
        t1 = time.time()
        skew = skew_from(t0, t1, server)
        self.skew_s = skew
        if abs(skew) > self.bound_s:
            if not self._warned:
                log.warning("measure: region %s agent clock is %+.1fs off the Redis server's (bound %gs): "
                            "its reports %s; fix the host's time sync (NTP)", self.region, skew, self.bound_s,
                            "will be rejected as from the future" if skew > 0 else "look older than they are")
            self._warned = True
        elif self._warned:
            log.info("measure: region %s agent clock back within %gs of Redis (%+.3fs)", self.region,
                     self.bound_s, skew)
            self._warned = False
        return skew

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        """Measure at once and then every ``interval_s`` seconds until ``stop`` is set.
        Redis failures are logged at debug level (the report writer already reports outages)."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(self.measure(), timeout=max(1.0, interval_s / 2))
            except (StoreError, TimeoutError) as exc:
                log.debug("run: clock skew of region %s not measured: %s", self.region, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
