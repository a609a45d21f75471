"""Vantage point: a region's agent probes the OTHER regions' public endpoints from outside.

An agent sees its own fleet from inside its region; it cannot tell whether clients on the
internet still reach the region. So every agent also GETs each other region's
``Region.vantage_url`` (the address DNS and anycast send clients to; regions without one are
not probed) every ``interval_s``, with the header ``X-GTM-Vantage: <own region>`` (operators
see in their logs who is probing), and writes what it saw as a
:class:`~gtm.models.report.VantageReport` under its own key only
(``gtm:{ns}:vantage:<own region>``, with an expiry). The engine judges reachability with a
quorum of these views; one vantage point failing is that vantage point's problem.

A target is **reachable** on an HTTP answer 200-399 within ``timeout_s`` (Route 53's HTTP
health checks count 2xx and 3xx as healthy); a timeout, a connection error or another status
is a failed probe with its reason. Redirects are not followed (a 3xx is an answer from the
endpoint). Per target the agent counts consecutive ok / failed probes. A report whose targets'
reachability differs from the last one written is written with ``changed=True`` (a wake-up
event, so the controller plans at once); otherwise a plain ``SET`` with expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

from gtm.agent.probe import STALL_SLACK_S
from gtm.errors import StoreError
from gtm.log import get_logger
from gtm.models.region import Region
from gtm.models.report import VantageCheck, VantageReport
from gtm.store.store import Store

log = get_logger("agent.vantage")

VANTAGE_HEADER = "X-GTM-Vantage"
"""Request header naming the vantage point (the probing agent's region)."""


@dataclass(frozen=True, slots=True)
class TargetResult:
    """One probe of one target: ``ok``, its round trip (milliseconds, None on failure), why not."""

    ok: bool
    latency_ms: float | None
    reason: str = ""
    stalled: bool = False
    """The deadline fired more than ``STALL_SLACK_S`` late: this agent was paused or starved, so
    the timeout says nothing about the target (not counted)."""


async def probe_target(session: aiohttp.ClientSession, url: str, vantage: str, timeout_s: float) -> TargetResult:
    """GET ``url`` once from vantage point ``vantage``. Never raises on a bad endpoint.

    Args:
        session: the agent's shared HTTP session (this request sets its own timeout).
        url: the target region's ``vantage_url``.
        vantage: this agent's region, sent as ``X-GTM-Vantage``.
        timeout_s: deadline for the answer's status line and headers, seconds.
    """
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            async with session.get(url, headers={VANTAGE_HEADER: vantage}, allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=None)) as resp:
                status = resp.status
    except TimeoutError:
        late = time.monotonic() - t0 - timeout_s > STALL_SLACK_S
        return TargetResult(False, None, f"no answer within {timeout_s:g}s", stalled=late)
    except (aiohttp.ClientError, OSError) as exc:
        return TargetResult(False, None, f"{type(exc).__name__}: {exc}"[:300])
    latency = round((time.monotonic() - t0) * 1000.0, 3)
    if 200 <= status < 400:
        return TargetResult(True, latency)
    return TargetResult(False, None, f"HTTP {status}")


def vantage_targets(own: str, regions: Sequence[Region]) -> dict[str, str]:
    """The regions ``own``'s agent probes: every other region with a ``vantage_url``."""
    return {r.name: r.vantage_url for r in regions if r.name != own and r.vantage_url}


@dataclass(slots=True)
class VantagePoint:
    """One agent's probes of the other regions, and the report it writes.

    Attributes:
        region: this agent's region (the vantage point).
        targets: region name → URL probed.
        store: where the report goes.
        agent_id: the agent process.
        interval_s: time between the starts of two rounds, seconds.
        timeout_s: deadline of one probe, seconds.
        ttl_s: expiry of the report key, seconds.
        write_timeout_s: deadline of one write to Redis, seconds.
        checks: per target, its last ``VantageCheck``.
        seq: rounds done.
        writes: reports written; ``write_failures``: writes that failed.
    """

    region: str
    targets: Mapping[str, str]
    store: Store
    agent_id: str
    interval_s: float = 1.0
    timeout_s: float = 1.0
    ttl_s: float = 4.0
    write_timeout_s: float = 1.0
    checks: dict[str, VantageCheck] = field(default_factory=dict)
    seq: int = 0
    writes: int = 0
    write_failures: int = 0
    _written: dict[str, bool] | None = None
    _outage: bool = False

    async def round(self, session: aiohttp.ClientSession) -> VantageReport:
        """Probe every target once (concurrently) and build the report (no write)."""
        names = sorted(self.targets)
        results = await asyncio.gather(
            *(probe_target(session, self.targets[n], self.region, self.timeout_s) for n in names)
        )
        for name, res in zip(names, results, strict=True):
            old = self.checks.get(name)
            if res.stalled:
                continue  # this agent stalled; the target's counts stay as they were
            ok_n = (old.consecutive_ok if old else 0) + 1 if res.ok else 0
            fail_n = 0 if res.ok else (old.consecutive_fail if old else 0) + 1
            if old is not None and old.reachable != res.ok:
                log.log(logging.INFO if res.ok else logging.WARNING, "round: %s %s from %s%s", name,
                        "reachable again" if res.ok else "unreachable", self.region,
                        f": {res.reason}" if res.reason else "")
            self.checks[name] = VantageCheck(target=name, reachable=res.ok, consecutive_ok=ok_n,
                                             consecutive_fail=fail_n, latency_ms=res.latency_ms,
                                             reason=res.reason)
        self.seq += 1
        return VantageReport(vantage=self.region, agent_id=self.agent_id, seq=self.seq, observed_at=time.time(),
                             interval_s=self.interval_s, checks=dict(self.checks))

    async def publish(self, report: VantageReport) -> bool:
        """Write ``report`` (``changed`` when a target's reachability flipped since the last
        write, or on the first); True if written. A failed write is logged once per outage."""
        seen = {n: c.reachable for n, c in report.checks.items()}
        changed = seen != self._written
        try:
            async with asyncio.timeout(self.write_timeout_s):
                await self.store.put_vantage(report, self.ttl_s, changed=changed)
        except (StoreError, TimeoutError, OSError) as exc:
            self.write_failures += 1
            if not self._outage:
                self._outage = True
                log.warning("publish: cannot write vantage report of %s: %s", self.region, exc or type(exc).__name__)
            return False
        if self._outage:
            self._outage = False
            log.warning("publish: vantage reports of %s resumed", self.region)
        self._written = seen
        self.writes += 1
        return True

    async def run(self, stop: asyncio.Event, session: Callable[[], aiohttp.ClientSession]) -> None:
        """Probe and publish every ``interval_s`` until ``stop`` is set (no targets: returns).

        Args:
            stop: ends the loop.
            session: returns the agent's shared HTTP session.
        """
        if not self.targets:
            return
        log.info("run: vantage point %s probes %s every %.2fs", self.region, ", ".join(sorted(self.targets)),
                 self.interval_s)
        next_at = time.monotonic()
        while not stop.is_set():
            try:
                await self.publish(await self.round(session()))
            except Exception:  # the loop must survive anything
                log.exception("run: vantage round failed for %s", self.region)
            next_at = max(next_at + self.interval_s, time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=next_at - time.monotonic())
