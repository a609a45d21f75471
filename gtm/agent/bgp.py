"""The region agent's anycast side: drive ExaBGP from the plan and from the agent's own fleet.

:class:`BgpSpeaker` decides, per anycast prefix of its region, which route ExaBGP should have,
and brings ExaBGP there one acknowledged command at a time (``gtm.agent.exabgp``):

* **The plan.** The controller's ``DesiredState.announcements`` (read with
  ``Store.get_desired`` every ``plan_poll_s``, 0.25 s): this region's ``Announcement`` per prefix
  gives the action and the preference (``prepend`` extra copies of the local ASN on the AS path,
  ``med``, ``communities``). The next hop is the inventory's ``Region.bgp.next_hop``. A prefix
  that leaves the plan is withdrawn.
* **Fast local withdrawal.** The agent knows its own fleet verdict before the controller does:
  when its report has ``consecutive_fail >= fall`` (2, the engine's default) every prefix is
  withdrawn at once, whatever the plan says. It is announced again only when the fleet is back
  (``consecutive_ok >= rise``, 3) *and* the plan says announce. Until the first healthy check
  nothing is announced.
* **Planned drains without loss.** When the plan withdraws a prefix with ``planned=True`` while
  it is announced, the route is first re-announced with GRACEFUL_SHUTDOWN (``65535:0``, RFC
  8326) added and held for ``graceful_s`` (5 s), so peers move traffic to other paths first;
  then it is withdrawn. A failure withdrawal (``planned=False``) or a local fleet failure
  (even in the middle of the hold) withdraws at once.
* **Static stability.** While Redis cannot be read the last plan is kept; only the agent's own
  fleet failing still withdraws.
* **Restarts.** Every new ExaBGP (a new bridge connection) starts from an empty table, so the
  speaker forgets what it sent and sends the full desired state again, withdrawals included:
  an announced route is never lost and a withdrawn one never comes back.
* **Stop.** On SIGTERM the speaker withdraws every prefix (waiting for the acknowledgements),
  then ExaBGP is stopped (its Cease drops what might remain).

Withdrawals are sent before announcements in each pass. Each pass also writes a
:class:`~gtm.models.report.BgpState` (``Store.put_bgp_state``): per prefix what the plan wants,
what the agent wants and why, what it sent, and ExaBGP's acknowledgement; per peer the session
state. A failed command (``error``, or no acknowledgement within ``ack_timeout_s``) is retried on
the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gtm.agent.exabgp import (
    GRACEFUL_SHUTDOWN,
    ExaBgpApi,
    ExaBgpProcess,
    Route,
    announce_command,
    check_community,
    withdraw_command,
)
from gtm.errors import GtmError, PermanentProviderError, StoreError, TemporaryProviderError
from gtm.log import get_logger
from gtm.models.plan import Announcement, DesiredState
from gtm.models.region import BgpSide, Region
from gtm.models.report import BgpAck, BgpPeerState, BgpRouteState, BgpState, FleetReport
from gtm.store.store import Store

log = get_logger("agent.bgp")


class BgpSettings(BaseModel):
    """Timing and thresholds of the agent's BGP speaker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fall: int = Field(default=2, ge=1)
    """Consecutive failed checks of the own fleet that withdraw every prefix at once (the
    policy's ``health.fall``, default 2)."""
    rise: int = Field(default=3, ge=1)
    """Consecutive good checks before the own fleet counts as back (``health.rise``, default 3)."""
    graceful_s: float = Field(default=5.0, ge=0)
    """How long a planned withdrawal is announced with GRACEFUL_SHUTDOWN first, seconds."""
    plan_poll_s: float = Field(default=0.25, gt=0)
    """Seconds between two reads of the desired state from Redis."""
    ack_timeout_s: float = Field(default=2.0, gt=0)
    """Deadline of ExaBGP's ``done``/``error`` for one command, seconds."""
    state_ttl_s: float = Field(default=10.0, gt=0)
    """Expiry of the stored BgpState, seconds."""
    state_every_s: float = Field(default=2.0, gt=0)
    """The BgpState is written after each change and at least this often, seconds."""
    stop_timeout_s: float = Field(default=5.0, gt=0)
    """How long withdrawing everything on stop may take, seconds."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """What one prefix should be on the speaker: ``route`` None means withdrawn."""

    prefix: str
    route: Route | None
    reason: str


@dataclass
class _Sent:
    """The last command for one prefix on the current ExaBGP, and its acknowledgement."""

    route: Route | None
    at: float
    acked: BgpAck = "pending"
    acked_at: float | None = None


def planned_route(a: Announcement, side: BgpSide) -> Route:
    """The route an ``announce`` asks for: the region's next hop, ``prepend`` extra copies of
    the local ASN, the MED (none when 0) and the communities the region may use
    (``side.communities`` and GRACEFUL_SHUTDOWN; others are dropped with a warning)."""
    allowed = set(side.communities) | {GRACEFUL_SHUTDOWN}
    comms = []
    for c in a.communities:
        canon = check_community(c)
        if canon in allowed:
            comms.append(canon)
        else:
            log.warning("bgp: community %s for %s is not in region %s's communities; not sent", c, a.prefix, a.region)
    return Route(
        prefix=a.prefix,
        next_hop=side.next_hop,
        as_path=(side.local_asn,) * (1 + a.prepend) if a.prepend > 0 else (),
        med=a.med if a.med > 0 else None,
        communities=tuple(sorted(set(comms))),
    )


def with_graceful_shutdown(route: Route) -> Route:
    """``route`` with the GRACEFUL_SHUTDOWN community added."""
    return Route(route.prefix, route.next_hop, route.as_path, route.med,
                 tuple(sorted({*route.communities, GRACEFUL_SHUTDOWN})))


class BgpSpeaker:
    """Keeps ExaBGP announcing what the plan and the own fleet allow (see the module docstring).

    Args:
        region: this agent's region; ``region.bgp`` must be set.
        store: where the plan is read and the BgpState written.
        settings: timing and thresholds.
        state_dir: ExaBGP's config, socket, log and pid file.
        agent_id: written into the BgpState.
        exabgp_bin: the ``exabgp`` executable (default: beside this Python or on PATH).
        manage_process: start and restart ExaBGP here (False: the caller runs ExaBGP with a
            config from ``gtm.agent.exabgp.exabgp_config`` and the bridge connects to
            ``api.socket_path``).

    Attributes:
        api: the ExaBGP API session.
        process: the managed ExaBGP (None when not managed).
        fleet_up: the own fleet verdict with fall/rise hysteresis; None before the first check.
        plan: this region's announcements from the last plan read, by prefix.
        commands: commands sent (acknowledged or not).

    Raises:
        PermanentProviderError: the region has no ``bgp`` side.
    """

    def __init__(self, region: Region, store: Store, settings: BgpSettings, state_dir: Path,
                 agent_id: str, exabgp_bin: str | None = None, manage_process: bool = True) -> None:
        if region.bgp is None:
            raise PermanentProviderError(f"region {region.name} has no bgp section in its inventory")
        self.region = region
        self.side: BgpSide = region.bgp
        self.store = store
        self.settings = settings
        self.agent_id = agent_id
        self.state_dir = state_dir
        self.api = ExaBgpApi(state_dir / "api.sock", on_change=self.wake)
        self.process = ExaBgpProcess(self.side, state_dir, exabgp_bin) if manage_process else None
        self.fleet_up: bool | None = None
        self.fleet_reason = "no check of the own fleet yet"
        self.plan: dict[str, Announcement] = {}
        self.plan_generation: int | None = None
        self.plan_reachable = True
        self.commands = 0
        self._sent: dict[str, _Sent] = {}
        self._connection = (0, 0)
        self._graceful: dict[str, float] = {}  # prefix → monotonic deadline of the GSHUT hold
        self._reasons: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._state_wake = asyncio.Event()
        self._dirty = True

    def wake(self) -> None:
        """Reconcile at once (a report, a plan or a session changed)."""
        self._wake.set()

    # -- inputs ---------------------------------------------------------------------------

    def observe(self, report: FleetReport) -> None:
        """Take the agent's newest fleet report: withdraw at ``fall`` consecutive failed checks,
        count as back after ``rise`` good ones (the first healthy check at start is enough)."""
        s = self.settings
        before = self.fleet_up
        if not report.healthy and report.consecutive_fail >= s.fall:
            self.fleet_up = False
            self.fleet_reason = f"own fleet failing ({report.consecutive_fail} checks): {report.reason}"[:400]
        elif report.healthy and (self.fleet_up is None or report.consecutive_ok >= s.rise):
            self.fleet_up = True
            self.fleet_reason = "own fleet healthy"
        if before != self.fleet_up:
            log.warning("bgp: region %s fleet %s", self.region.name,
                        "up" if self.fleet_up else f"down: {self.fleet_reason}")
            self.wake()

    def take_plan(self, state: DesiredState | None) -> None:
        """Take this region's announcements from a plan (None: no plan stored yet)."""
        if state is None:
            return
        mine = {a.prefix: a for anns in state.announcements.values() for a in anns
                if a.region == self.region.name}
        self.plan_generation = state.generation
        if mine != self.plan:
            self.plan = mine
            self.wake()

    async def _poll_plan(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                self.take_plan(await self.store.get_desired())
                if not self.plan_reachable:
                    log.warning("bgp: plan readable again")
                self.plan_reachable = True
            except StoreError as exc:
                if self.plan_reachable:
                    log.warning("bgp: cannot read the plan, keeping the last one: %s", exc)
                self.plan_reachable = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.plan_poll_s)

    # -- decision -------------------------------------------------------------------------

    def wanted(self, now: float) -> list[Wanted]:
        """What each prefix should be now (``now``: monotonic seconds), withdrawals first."""
        out: list[Wanted] = []
        for prefix in sorted(set(self.plan) | set(self._sent) | set(self._graceful)):
            out.append(self._wanted_one(prefix, now))
        return sorted(out, key=lambda w: (w.route is not None, w.prefix))

    def _wanted_one(self, prefix: str, now: float) -> Wanted:
        a = self.plan.get(prefix)
        if a is None:
            self._graceful.pop(prefix, None)
            return Wanted(prefix, None, "not in the plan")
        if self.fleet_up is not True:
            return Wanted(prefix, None, self.fleet_reason)
        if a.action == "announce":
            self._graceful.pop(prefix, None)
            return Wanted(prefix, planned_route(a, self.side), f"plan: {a.reason}" if a.reason else "plan: announce")
        if a.planned:
            sent = self._sent.get(prefix)
            deadline = self._graceful.get(prefix)
            if deadline is None and sent is not None and sent.route is not None:
                deadline = self._graceful[prefix] = now + self.settings.graceful_s
                log.info("bgp: %s: planned withdrawal, GRACEFUL_SHUTDOWN for %gs first", prefix,
                         self.settings.graceful_s)
            if deadline is not None and now < deadline:
                base = sent.route if sent is not None and sent.route is not None else planned_route(a, self.side)
                return Wanted(prefix, with_graceful_shutdown(base),
                              f"planned withdrawal, GRACEFUL_SHUTDOWN held {deadline - now:.1f}s more: {a.reason}")
        return Wanted(prefix, None, f"plan: {a.reason}" if a.reason else "plan: withdraw")

    # -- acting ---------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """One pass: send what differs from what the current ExaBGP has (see the module docstring)."""
        if (self.api.connections, self.api.sessions_up) != self._connection:
            self._connection = (self.api.connections, self.api.sessions_up)
            self._sent.clear()  # a new ExaBGP (empty table) or a session up again: send everything
            self._dirty = True
        now = time.monotonic()
        for w in self.wanted(now):
            self._reasons[w.prefix] = w.reason
            sent = self._sent.get(w.prefix)
            if sent is not None and sent.route == w.route and sent.acked == "done":
                continue
            if not self.api.connected:
                break
            await self._send(w)

    async def _send(self, w: Wanted) -> None:
        cmd = withdraw_command(w.prefix) if w.route is None else announce_command(w.route)
        entry = _Sent(w.route, time.time())
        self._sent[w.prefix] = entry
        self._dirty = True
        self.commands += 1
        try:
            entry.acked = "done" if await self.api.send(cmd, self.settings.ack_timeout_s) == "done" else "error"
        except TemporaryProviderError as exc:
            log.warning("bgp: %s not acknowledged: %s", cmd, exc)
            entry.acked = "pending"
            return
        entry.acked_at = time.time()
        if entry.acked != "done":
            log.error("bgp: ExaBGP refused %r (%s); retrying on the next pass", cmd, entry.acked)
        else:
            log.info("bgp: %s (%s)", cmd, w.reason)

    def state(self) -> BgpState:
        """The speaker's state as stored for ``gtm status``."""
        routes: dict[str, BgpRouteState] = {}
        now = time.monotonic()
        for w in self.wanted(now):
            a = self.plan.get(w.prefix)
            sent = self._sent.get(w.prefix)
            r = sent.route if sent is not None else None
            routes[w.prefix] = BgpRouteState(
                prefix=w.prefix,
                plan_action=a.action if a is not None else None,
                wanted="announce" if w.route is not None else "withdraw",
                reason=self._reasons.get(w.prefix, w.reason)[:500],
                sent_action=None if sent is None else ("announce" if r is not None else "withdraw"),
                sent_next_hop=r.next_hop if r is not None else None,
                sent_prepend=r.prepend if r is not None else 0,
                sent_med=r.med if r is not None else None,
                sent_communities=r.communities if r is not None else (),
                sent_at=sent.at if sent is not None else None,
                acked=sent.acked if sent is not None else None,
                acked_at=sent.acked_at if sent is not None else None,
            )
        return BgpState(
            region=self.region.name, agent_id=self.agent_id, observed_at=time.time(),
            connected=self.api.connected, restarts=max(0, self.api.connections - 1),
            fleet_up=self.fleet_up, plan_generation=self.plan_generation,
            plan_reachable=self.plan_reachable, last_ack_at=self.api.last_ack_at, routes=routes,
            peers={p.address: BgpPeerState(address=p.address, up=p.up, event=p.event, changed_at=p.changed_at)
                   for p in self.api.peers.values()},
        )

    async def _write_state(self) -> None:
        try:
            async with asyncio.timeout(1.0):
                await self.store.put_bgp_state(self.state(), self.settings.state_ttl_s)
        except (StoreError, TimeoutError) as exc:
            log.debug("bgp: state not written: %s", exc)

    # -- lifecycle ------------------------------------------------------------------------

    async def _state_writer(self, stop: asyncio.Event) -> None:
        """Write the BgpState after each change and at least every ``state_every_s``, in its own
        task: a slow Redis never delays a withdrawal."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._state_wake.wait(), self.settings.state_every_s)
            self._state_wake.clear()
            await self._write_state()

    async def run(self, stop: asyncio.Event) -> None:
        """Run ExaBGP (when managed), follow the plan and the fleet until ``stop`` is set, then
        withdraw every prefix and stop ExaBGP. Never raises on a Redis or ExaBGP failure.

        Raises:
            OSError: the state directory or the API socket cannot be created.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        await self.api.start()
        own_stop = asyncio.Event()  # ExaBGP must outlive ``stop`` until the withdrawals are done
        helpers = [asyncio.create_task(self._poll_plan(stop), name=f"bgp-plan-{self.region.name}"),
                   asyncio.create_task(self._state_writer(stop), name=f"bgp-state-{self.region.name}")]
        exabgp = (asyncio.create_task(self.process.run(own_stop), name=f"exabgp-{self.region.name}")
                  if self.process is not None else None)
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self.reconcile()
                except GtmError as exc:
                    log.error("bgp: reconcile failed: %s", exc)
                if self._dirty:
                    self._dirty = False
                    self._state_wake.set()
                timeout = self.settings.plan_poll_s
                now = time.monotonic()
                pending = [d - now for d in self._graceful.values() if d > now]
                if pending:
                    timeout = min(timeout, min(pending) + 0.001)
                waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._wake.wait()),
                                                   asyncio.ensure_future(stop.wait())}
                _done, rest = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for t in rest:
                    t.cancel()
        finally:
            try:
                await asyncio.wait_for(self._withdraw_all(), self.settings.stop_timeout_s)
            except (TimeoutError, GtmError) as exc:
                log.error("bgp: withdrawing on stop did not finish: %s", exc)
            own_stop.set()
            for t in helpers:
                t.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            if exabgp is not None:
                await asyncio.gather(exabgp, return_exceptions=True)
            await self._write_state()
            await self.api.aclose()

    async def _withdraw_all(self) -> None:
        """Withdraw every prefix this ExaBGP announces (on stop)."""
        for prefix, sent in sorted(self._sent.items()):
            if sent.route is not None and self.api.connected:
                await self._send(Wanted(prefix, None, "agent stopping"))
        log.info("bgp: region %s: every prefix withdrawn; stopping", self.region.name)
