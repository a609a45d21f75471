"""Run one drill against a running installation: preflight, act, hold, restore, judge.

``run_drill`` takes the drill lock (renewed every ``lease_s / 3``), starts the client load,
acts, holds, restores, keeps the load running until the answers name the region again, and
returns the ``DrillReport``. Every second it checks the policy's ``drills:`` limits; crossing
one (or ``stop`` being set: SIGINT/SIGTERM) aborts: the change is undone at once. The restore
and the lock's release run in ``finally`` and are shielded from cancellation, so a drill never
leaves an override or a lock behind; a drill process that is SIGKILLed leaves a ``failover``
override that lifts itself ``lease_s`` after its last renewal (and a lock that lapses).

The acts:

- ``drain``: ``gtm.controller.actions.drain`` (safety rules apply, audited ``via=drill``), with
  an expiry of ``max_duration_s + lease_s`` as the dead man's switch; restored by ``undrain``.
- ``failover``: an ``Override(kind="failover")`` written compare-and-set, its expiry renewed
  every ``lease_s / 3``; restored by a compare-and-delete.
- ``kill``: ``POST <source>/_sim/kill {"for_s": hold}`` to every fleet source of the region;
  restored when each answers ``/_sim/state`` again.

Audit entries (``via="drill"``): ``drill <kind> start``, ``drill <kind> act``, ``drill <kind>
restore``, ``drill <kind> abort`` and ``drill verdict`` (note: the verdict line).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from gtm.config.loader import Config
from gtm.controller import actions
from gtm.drills import judge as J
from gtm.drills.live import DrillProgress
from gtm.drills.load import ClientLoad, LoadSettings, Population
from gtm.drills.preflight import Preflight, check, failover_override, gather, sim_check
from gtm.errors import GtmError
from gtm.log import get_logger
from gtm.models.audit import AuditEntry
from gtm.models.drill import DrillEvent, DrillKind, DrillLimits, DrillLock, DrillReport, RequestRecord
from gtm.models.override import Override
from gtm.models.policy import Service
from gtm.store.store import Store

log = get_logger("drills.runner")

MAX_FAILURES_KEPT = 1000
"""Failed requests kept in the report."""


@dataclass
class DrillOptions:
    """How to run a drill.

    Attributes:
        actor / reason: who and why (audited).
        hold_s: how long the change is held, seconds.
        baseline_s: load before acting, seconds (shows the region taking traffic first).
        settle_timeout_s: after the restore, at most this long waiting for the answers to name
            the region again, seconds (None: TTL + report timeout + 30).
        probe_interval_s: the agents' probe interval, seconds (detection time of a kill).
        limits: the ``drills:`` limits (None: the policy's).
    """

    actor: str = "operator"
    reason: str = "drill"
    hold_s: float = 30.0
    baseline_s: float = 3.0
    settle_timeout_s: float | None = None
    probe_interval_s: float = 1.0
    limits: DrillLimits | None = None


def service_for(cfg: Config, region: str, name: str | None = None) -> Service:
    """The service a drill of ``region`` loads: ``name``, else the first that uses the region.

    Raises:
        GtmError: no such service.
    """
    for svc in cfg.policy.services:
        if (name is None and region in svc.regions) or svc.name == name:
            return svc
    raise GtmError(f"no service {name!r}" if name else f"no service uses {region}")


async def preflight(store: Store, cfg: Config, kind: DrillKind, region: str, session: aiohttp.ClientSession,
                    *, hold_s: float) -> Preflight:
    """The plan and refusals of a drill now (reads Redis and, for ``kill``, the fleets).
    Raises ``StoreError``."""
    facts = await gather(store, cfg, kind, region, time.time(), session)
    return check(cfg, kind, region, facts, hold_s=hold_s)


class _Drill:
    """One drill's state while it runs (see ``run_drill``)."""

    def __init__(self, store: Store, cfg: Config, kind: DrillKind, region: str, opts: DrillOptions,
                 load: ClientLoad, stop: asyncio.Event, on_progress: Callable[[DrillProgress], None] | None,
                 resolver: str) -> None:
        self.store, self.cfg, self.kind, self.region, self.opts = store, cfg, kind, region, opts
        self.limits = opts.limits or cfg.policy.drills
        self.load, self.stop, self.on_progress, self.resolver = load, stop, on_progress, resolver
        self.started = time.time()
        self.id = f"drill-{kind}-{region}-{int(self.started)}"[:64]
        load.settings = replace(load.settings, client_id=self.id)  # the fleets count this drill's requests
        self.events: list[DrillEvent] = []
        self.lock: DrillLock | None = None
        self.override: Override | None = None
        self.acted: float | None = None
        self.restored: float | None = None
        self.restoring = False
        self.restore_error = ""
        self.aborted: str | None = None
        self.health: dict[int, dict[str, str]] = {}
        self.svc = service_for(cfg, region)
        self.expected: float | None = None
        if kind == "kill":
            self.expected = J.expected_kill_window(cfg.policy.health, self.svc.ttl, self.limits,
                                                   opts.probe_interval_s)
        self.held_from: float | None = None
        self.status = DrillProgress(id=self.id, kind=kind, region=region, hold_s=opts.hold_s, limits=self.limits,
                                    started=self.started)

    # -- bookkeeping --------------------------------------------------------------------

    def event(self, kind: str, text: str = "") -> None:
        self.events.append(DrillEvent(t=time.time(), kind=kind, text=text))
        log.info("drill %s: %s %s", self.id, kind, text)

    async def audit(self, what: str, note: str = "", **kw: Any) -> None:
        entry = AuditEntry(ts=time.time(), action=what, region=self.region, actor=self.opts.actor,
                           reason=self.opts.reason, via="drill", note=note, policy_digest=self.cfg.digest,
                           policy_commit=self.cfg.commit, **kw)
        try:
            await self.store.append_audit(entry)
        except GtmError as exc:
            log.warning("drill %s: audit %s not written: %s", self.id, what, exc)

    async def set_phase(self, phase: str) -> None:
        self.status.phase = phase
        if self.lock is not None and phase in ("act", "hold", "restore"):
            new = self.lock.model_copy(update={"phase": phase, "expires_at": time.time() + self.limits.lease_s})
            if await self.store.renew_drill(new, self.limits.lease_s, expect=self.lock):
                self.lock = new

    # -- background duties ------------------------------------------------------------

    async def renew(self) -> None:
        """Renew the lock and the failover override every ``lease_s / 3``."""
        while True:
            await asyncio.sleep(self.limits.lease_s / 3)
            now = time.time()
            try:
                if self.lock is not None:
                    new = self.lock.model_copy(update={"expires_at": now + self.limits.lease_s})
                    if await self.store.renew_drill(new, self.limits.lease_s, expect=self.lock):
                        self.lock = new
                    elif self.aborted is None and getattr(await self.store.get_drill(), "id", None) != self.id:
                        self.aborted = "aborted: the drill lock was lost (it lapsed or another drill took it)"
                ov = self.override
                if ov is not None and not self.restoring:
                    nxt = ov.model_copy(update={"expires_at": now + self.limits.lease_s})
                    if await self.store.put_override_if(nxt, expect=ov):
                        self.override = nxt
                    elif self.aborted is None and not self.restoring:
                        self.aborted = f"aborted: the failover override of {self.region} changed under the drill"
            except GtmError as exc:
                log.warning("drill %s: renewal failed: %s", self.id, exc)

    async def watch(self) -> None:
        """Each second: the health in force, the progress, the limits."""
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            with contextlib.suppress(GtmError):
                state = await self.store.get_desired()
                if state is not None:
                    self.status.health = {r: f"{s.state} ({s.override})" if s.override else s.state
                                          for r, s in state.regions.items()}
                    self.health[int(now - self.started)] = self.status.health
            self.progress(now)
            if self.acted is not None and self.restored is None and self.aborted is None:
                judge_from = self.acted + self.expected if self.expected is not None else None
                crossed = J.limit_crossed(self.limits, self.load.records, now, self.started, judge_from=judge_from)
                if crossed is not None:
                    self.aborted = f"aborted: {crossed}"
                    self.event("limit", crossed)

    def progress(self, now: float) -> None:
        st = self.status
        recs = self.load.records
        st.elapsed_s = now - self.started
        st.failed = sum(1 for r in recs if not r.ok)
        st.ok = len(recs) - st.failed
        st.last_rps = sum(1 for r in recs if now - 1.0 <= r.t < now)
        window = [r for r in recs if r.t >= now - self.limits.error_window_s]
        st.p99_ms = J.percentile([r.latency_ms for r in window], 0.99)
        st.error_rate = (sum(1 for r in window if not r.ok) / len(window)) if window else 0.0
        st.window_requests = len(window)
        if self.expected is not None and self.acted is not None:
            st.error_judged_after_s = self.acted + self.expected - self.started
        st.hold_elapsed_s = now - self.held_from if self.held_from is not None else None
        answers = [a for a in self.load.answers if a.t >= now - 3.0]
        counts: dict[str, float] = {}
        for a in answers:
            counts[a.region or "none"] = counts.get(a.region or "none", 0.0) + 1
        st.answer_shares = {k: v / len(answers) for k, v in sorted(counts.items())}
        recent = [r for r in recs if r.t >= now - 3.0]
        shares: dict[str, dict[str, float]] = {}
        for r in recent:
            shares.setdefault(r.population, {}).setdefault(r.region or "none", 0.0)
            shares[r.population][r.region or "none"] += 1
        st.shares = {p: {k: v / sum(c.values()) for k, v in sorted(c.items())} for p, c in shares.items()}
        st.events = self.events[-6:]
        if self.on_progress is not None:
            try:
                self.on_progress(st)
            except Exception:  # a broken view must not stop the limit checks
                log.exception("drill %s: progress view failed", self.id)

    async def wait(self, seconds: float) -> bool:
        """Wait ``seconds`` unless aborted or stopped first; returns whether it ran out."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.stop.is_set() and self.aborted is None:
                self.aborted = "aborted: interrupted by the operator (SIGINT/SIGTERM)"
            if self.aborted is not None:
                return False
            await asyncio.sleep(min(0.1, max(0.0, end - time.monotonic())))
        return True

    # -- act / restore ----------------------------------------------------------------

    async def act(self, session: aiohttp.ClientSession) -> None:
        note = ""
        if self.kind == "drain":
            order = actions.DrainOrder(region=self.region, reason=f"{self.id}: {self.opts.reason}"[:500],
                                       actor=self.opts.actor,
                                       expires_in=self.limits.max_duration_s + self.limits.lease_s)
            out = await actions.drain(self.store, self.cfg, order, via="drill")
            if out.refused:
                self.aborted = "aborted: the safety rules held the drain: " + "; ".join(out.projection.held
                                                                                       if out.projection else [])
                return
            note = "drain written (safety rules apply)"
        elif self.kind == "failover":
            ov = failover_override(self.region, drill=self.id, actor=self.opts.actor,
                                   reason=f"{self.id}: {self.opts.reason}"[:500], now=time.time(),
                                   lease_s=self.limits.lease_s)
            if not await self.store.put_override_if(ov, expect=None):
                self.aborted = f"aborted: {self.region} got an override while the drill started"
                return
            self.override = ov
            note = f"failover override written, expires {self.limits.lease_s:g} s after its last renewal"
        else:
            src = self.cfg.inventory.regions[self.region].fleet
            hold = max(1, round(self.opts.hold_s))
            for s in src:
                try:
                    async with session.post(s.url.rstrip("/") + "/_sim/kill", json={"for_s": hold},
                                            timeout=aiohttp.ClientTimeout(total=5)) as resp:
                        if resp.status >= 300:
                            self.aborted = f"aborted: {s.name} refused the kill (HTTP {resp.status})"
                            return
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.aborted = f"aborted: killing {s.name} failed: {type(exc).__name__} {exc}"
                    return
            note = f"{len(src)} fleet source(s) killed for {hold} s"
        self.acted = time.time()
        self.event("act", note)
        await self.audit(f"drill {self.kind} act", note, expires_at=self.override.expires_at if self.override else None)

    async def restore(self, session: aiohttp.ClientSession) -> None:
        """Undo the act (idempotent; never raises)."""
        self.restoring = True  # from here on the override is not renewed
        if self.acted is None and self.override is None:
            return
        try:
            if self.kind == "drain":
                stored = await self.store.get_override(self.region)
                if stored is not None and not stored.reason.startswith(f"{self.id}:"):
                    self.event("note", f"{self.region}'s override is no longer the drill's ({stored.kind} by "
                                       f"{stored.actor}): left in place")
                else:
                    await actions.undrain(self.store, self.cfg, self.region, actor=self.opts.actor,
                                          reason=f"{self.id}: restore", via="drill")
            elif self.kind == "failover":
                await self._lift_override()
            else:
                deadline = time.monotonic() + self.opts.hold_s + 30
                for s in self.cfg.inventory.regions[self.region].fleet:
                    while await sim_check(session, s.url, 1.0) is not None and time.monotonic() < deadline:
                        await asyncio.sleep(0.2)
        except Exception as exc:
            log.error("drill %s: restore failed: %s", self.id, exc)
            self.restore_error = f"the restore failed: {type(exc).__name__}: {exc}"
            self.event("note", self.restore_error)
        self.restored = time.time()
        self.event("restore", "undone")
        await self.audit(f"drill {self.kind} restore", "undone")

    async def _lift_override(self) -> None:
        for _ in range(5):
            ov = self.override
            if ov is None:
                return
            if await self.store.delete_override_if(ov):
                self.override = None
                return
            stored = await self.store.get_override(self.region)
            if stored is None or stored.drill != self.id:
                self.override = None  # gone, or someone else's now: never delete theirs
                return
            self.override = stored
        raise GtmError(f"the failover override of {self.region} kept changing; not lifted")

    async def settle(self) -> None:
        """After the restore, wait (load running) until the answers name the region again."""
        timeout = self.opts.settle_timeout_s
        if timeout is None:
            timeout = self.svc.ttl + self.cfg.policy.health.report_timeout_s + 30
        end = time.monotonic() + timeout
        restored = self.restored or time.time()
        while time.monotonic() < end:  # also after an interrupt: the report says when traffic came back
            samples = self.load.answers or self.load.client_answers()
            if any(a.t >= restored and a.region == self.region for a in samples):
                self.event("restored", f"the answers name {self.region} again")
                return
            await asyncio.sleep(0.2)

    # -- the report ---------------------------------------------------------------------

    def report(self, preflight: Preflight) -> DrillReport:
        ended = time.time()
        answers = self.load.answers or self.load.client_answers()
        phases = J.Phases(started=self.started, acted=self.acted, restored=self.restored, ended=ended)
        fig = J.figures(self.region, phases, self.load.records, answers)
        verdict = J.judge(self.kind, self.region, self.limits, fig, acted=self.acted is not None,
                          restored=self.restored is not None, aborted=self.aborted,
                          expected_window_s=self.expected)
        if self.restore_error:
            verdict.reasons.append(self.restore_error)
            if verdict.verdict == "passed":
                verdict.verdict = "failed"
        for kind, t0, dt, text in (("answers_moved", self.acted, fig.answers_moved_s, "answers left the region"),
                                   ("clients_moved", self.acted, fig.clients_moved_s, "clients left the region")):
            if t0 is not None and dt is not None:
                self.events.append(DrillEvent(t=t0 + dt, kind=kind, text=text))
        self.events.sort(key=lambda e: e.t)
        records = self.load.records
        return DrillReport(
            id=self.id, kind=self.kind, region=self.region, actor=self.opts.actor, started=self.started, ended=ended,
            ttl_s=self.svc.ttl, resolver=self.resolver, verdict=verdict.verdict, reasons=verdict.reasons,
            answers_moved_s=fig.answers_moved_s, clients_moved_s=fig.clients_moved_s, restored_s=fig.restored_s,
            error_window_s=fig.error_window_s, expected_window_s=self.expected, total_requests=fig.total_requests,
            failed_requests=fig.failed_requests, residency_violations=fig.residency_violations,
            plan=preflight.plan, events=self.events,
            series=J.series(self.started, ended, records, answers, self.health),
            failures=[r for r in sorted(records, key=lambda r: r.t) if not r.ok][:MAX_FAILURES_KEPT],
        )


def refused_report(kind: DrillKind, region: str, actor: str, pf: Preflight, now: float) -> DrillReport:
    """The report of a drill the preflight refused (exit 3)."""
    return DrillReport(id=f"drill-{kind}-{region}-{int(now)}"[:64], kind=kind, region=region, actor=actor,
                       started=now, ended=now, verdict="refused", reasons=pf.refusals, plan=pf.plan)


async def run_drill(
    store: Store,
    cfg: Config,
    kind: DrillKind,
    region: str,
    *,
    settings: LoadSettings,
    populations: list[Population],
    options: DrillOptions | None = None,
    session: aiohttp.ClientSession,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[DrillProgress], None] | None = None,
    on_record: Callable[[RequestRecord], None] | None = None,
    resolver: str = "",
) -> DrillReport:
    """Run one drill and return its report (never a refusal as an exception: a refused drill
    returns a report with verdict ``refused``).

    Args:
        store: the installation's Redis.
        cfg: the policy and inventory in force.
        kind / region: the drill.
        settings / populations: the client load.
        options: actor, reason, hold, limits (``DrillOptions``).
        session: the HTTP session for the clients and the fleets.
        stop: set it to abort and restore (SIGINT/SIGTERM).
        on_progress: called about once a second with the drill's ``DrillProgress`` (one
            object, updated in place; ``gtm.drills.live.render_live`` shows it).
        on_record: called with each finished client request.
        resolver: how clients resolve, for the report (e.g. ``Unbound.describe()``).

    Raises:
        StoreError: Redis failed before the drill acted (after it acted, the restore still runs
            and the error is raised once it has).
    """
    opts = options or DrillOptions()
    stop = stop if stop is not None else asyncio.Event()
    pf = await preflight(store, cfg, kind, region, session, hold_s=opts.hold_s)
    if not pf.ok:
        return await _refused(store, cfg, kind, region, opts, pf)
    load = ClientLoad(settings, populations, cfg.inventory, session, on_record=on_record)
    d = _Drill(store, cfg, kind, region, opts, load, stop, on_progress, resolver)
    lock = DrillLock(id=d.id, kind=kind, region=region, actor=opts.actor, started=d.started, phase="act",
                     expires_at=d.started + d.limits.lease_s)
    running = await store.acquire_drill(lock, d.limits.lease_s)
    if running is not None:
        pf.refusals.append(f"another drill is running: {running.id} ({running.kind} {running.region} "
                           f"by {running.actor})")
        return await _refused(store, cfg, kind, region, opts, pf)
    d.lock = lock
    d.event("preflight", "; ".join(pf.plan))
    load_stop = asyncio.Event()
    tasks = [asyncio.create_task(load.run(load_stop), name="drill-load"),
             asyncio.create_task(d.renew(), name="drill-renew"),
             asyncio.create_task(d.watch(), name="drill-watch")]
    try:
        await d.audit(f"drill {kind} start", "; ".join(pf.plan)[:2000])
        d.status.phase = "baseline"
        if await d.wait(opts.baseline_s):
            await d.set_phase("act")
            try:
                await d.act(session)
            except GtmError as exc:
                d.aborted = f"aborted: the act failed: {exc}"
            if d.aborted is None:
                await d.set_phase("hold")
                d.held_from = time.time()
                await d.wait(opts.hold_s)
    finally:
        restore = asyncio.ensure_future(_finish(d, session))
        try:
            await asyncio.shield(restore)
        except asyncio.CancelledError:
            await restore
            raise
        finally:
            load_stop.set()
            for t in tasks[1:]:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(GtmError):
                await store.release_drill(d.lock)
    report = d.report(pf)
    await d.audit("drill verdict", report.verdict_line()[:2000])
    return report


async def _refused(store: Store, cfg: Config, kind: DrillKind, region: str, opts: DrillOptions,
                   pf: Preflight) -> DrillReport:
    """The refused report, audited (``drill verdict``) like every drill."""
    report = refused_report(kind, region, opts.actor, pf, time.time())
    with contextlib.suppress(GtmError):
        await store.append_audit(AuditEntry(ts=report.ended, action="drill verdict", region=region, actor=opts.actor,
                                            reason=opts.reason, via="drill", note=report.verdict_line()[:2000],
                                            policy_digest=cfg.digest, policy_commit=cfg.commit))
    return report


async def _finish(d: _Drill, session: aiohttp.ClientSession) -> None:
    """Abort (when a limit or an interrupt says so), restore, settle."""
    if d.aborted is not None:
        d.event("abort", d.aborted)
        await d.audit(f"drill {d.kind} abort", d.aborted)
    with contextlib.suppress(GtmError):
        await d.set_phase("restore")
    await d.restore(session)
    if d.acted is not None:
        d.status.phase = "settle"
        await d.settle()
    d.status.phase = "done"


__all__ = ["DrillOptions", "preflight", "refused_report", "run_drill", "service_for"]
