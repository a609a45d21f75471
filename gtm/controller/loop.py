"""The controller: reads inputs from Redis, plans, publishes the change, audits it.

Level-triggered: every cycle rebuilds the whole snapshot and re-plans, so an unchanged plan
means converged and costs no provider write. Cycles run when an agent or operator publishes
an event, and on a timer (``tick_s``) that catches lapsed heartbeats and paces planned steps.

Several replicas may run; only the lease holder plans and writes (its fencing token is checked
by Redis on every desired-state write). Followers keep their local publishers (embedded DNS)
in step with the leader's desired state, so each replica can answer DNS.

Static stability: when Redis cannot be read the controller does nothing to its publishers;
they keep serving the last good routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gtm.config.loader import Config, load_config
from gtm.controller.provider_worker import ProviderWorker
from gtm.engine import PlanCache, plan
from gtm.errors import ConfigError, LeaseLostError, ProviderError, StoreError
from gtm.log import get_logger
from gtm.models.audit import AuditDecision, AuditEntry
from gtm.models.plan import DesiredState
from gtm.models.policy import Policy
from gtm.providers.base import Publisher
from gtm.store import Store
from gtm.store.inputs import planned_regions, read_plan_inputs
from gtm.tasks import Supervisor

log = get_logger("controller")


@dataclass
class ControllerSettings:
    """Controller timing.

    Attributes:
        tick_s: seconds between cycles when no event arrives.
        lease_ttl_s: leader lease length, seconds; renewed every cycle.
        warmup_s: a new leader waits up to this long, seconds, for a report from every region
            before it plans (keeping the routing in force meanwhile).
        owner: this replica's id in the lease (host:pid by default).
    """

    tick_s: float = 0.5
    lease_ttl_s: float = 3.0
    warmup_s: float = 3.0
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def __post_init__(self) -> None:
        if not 0.05 <= self.tick_s <= 60:
            raise ValueError(f"tick_s must be within 0.05-60 seconds (got {self.tick_s})")
        if self.lease_ttl_s < 2 * self.tick_s:
            raise ValueError(f"lease_ttl_s ({self.lease_ttl_s}) must be at least twice tick_s ({self.tick_s})")


@dataclass
class ControllerStats:
    """Counters for tests, benchmarks and status."""

    cycles: int = 0
    plans: int = 0
    publishes: dict[str, int] = field(default_factory=dict)
    publish_errors: dict[str, int] = field(default_factory=dict)
    rejected_reports: int = 0
    store_errors: int = 0
    config_errors: int = 0
    engine_errors: int = 0
    last_error: str = ""
    plan_seconds: PlanTimes = field(default_factory=lambda: PlanTimes())
    """How long ``engine.plan`` took, per call (the ``gtm_plan_duration_seconds`` histogram)."""


PLAN_TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Upper bounds, seconds, of the plan-time histogram buckets (``+Inf`` is implied)."""


@dataclass
class PlanTimes:
    """A cumulative histogram of plan durations, seconds (Prometheus ``le`` buckets).

    Attributes:
        counts: per bound of ``PLAN_TIME_BUCKETS``, plans that took at most that long.
        count / total_s: plans timed and their summed duration, seconds.
        last_s: the newest plan's duration, seconds.
    """

    counts: list[int] = field(default_factory=lambda: [0] * len(PLAN_TIME_BUCKETS))
    count: int = 0
    total_s: float = 0.0
    last_s: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one plan that took ``seconds``."""
        self.count += 1
        self.total_s += seconds
        self.last_s = seconds
        for i, bound in enumerate(PLAN_TIME_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1


class Controller:
    """The reconcile loop.

    Args:
        store: the Redis store.
        config_loader: returns the current ``Config``; raises ``ConfigError`` on a bad file
            (the last good config then stays in force).
        publishers: where desired routing goes (embedded DNS, ...).
        settings: timing.
        clock: the wall clock, unix seconds (injectable for tests).
    """

    def __init__(
        self,
        store: Store,
        config_loader: Callable[[], Config],
        publishers: Sequence[Publisher],
        settings: ControllerSettings | None = None,
        clock: Callable[[], float] = time.time,
        caps_provider: Callable[..., Any] | None = None,  # async (controller, reports, now) -> caps
        providers: Sequence[Publisher] = (),
        provider_resync_s: float = 0.0,
        provider_factory: Callable[[Policy], Sequence[Publisher]] | None = None,
    ) -> None:
        self.store = store
        self.config_loader = config_loader
        self.publishers = list(publishers)
        self.provider_factory = provider_factory
        self._provider_resync_s = provider_resync_s
        self.clock = clock
        self.workers = [self._worker(p) for p in providers]
        self._next_workers: list[ProviderWorker] | None = None
        self._provider_sig: str | None = None
        self._snapshot_digest: str | None = None
        self.settings = settings or ControllerSettings()
        self.caps_provider = caps_provider
        self.stats = ControllerStats()
        self.config: Config | None = None
        self.state: DesiredState | None = None
        self.lease: tuple[str, int] | None = None
        self._wake = asyncio.Event()
        self._plan_cache = PlanCache()
        self._applied: dict[str, str] = {}
        self.published: dict[str, dict[str, Any]] = {}
        """Per local publisher (embedded DNS): ``generation``, ``applied_at`` and ``lag_s``
        (plan to applied, seconds) of the newest routing it took."""
        self._reread = False
        self._leader_since = 0.0
        self._info_dirty = True
        self._load_lock = threading.Lock()  # one loader call at a time, even past a cancelled cycle
        self._tasks = Supervisor("controller")  # run() replaces it with one tied to its stop event

    def _worker(self, provider: Publisher) -> ProviderWorker:
        return ProviderWorker(
            provider, self.store, may_write=lambda: self.is_leader, fencing_token=lambda: self.fencing_token,
            resync_s=self._provider_resync_s, clock=self.clock,
        )

    @property
    def is_leader(self) -> bool:
        return self.lease is not None

    @property
    def fencing_token(self) -> int | None:
        return self.lease[1] if self.lease else None

    def applied_digest(self, publisher: str) -> str | None:
        """The routing digest local publisher ``publisher`` last took (None: none yet)."""
        return self._applied.get(publisher)

    def wake(self) -> None:
        """Run a cycle as soon as possible."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run cycles until ``stop`` is set; then release the lease.

        Raises:
            TaskCrashedError: a background task (event listener, provider worker) crashed; it
                was logged then, and the controller shut down cleanly.
        """
        sup = self._tasks = Supervisor("controller", stop)
        sup.start("controller-events", self._listen(stop))
        running: dict[ProviderWorker, tuple[asyncio.Task[None], asyncio.Event]] = {}

        def start(worker: ProviderWorker) -> None:
            own = asyncio.Event()
            running[worker] = (sup.start(f"provider-{worker.name}", worker.run(own)), own)

        for w in self.workers:
            start(w)
        try:
            while not stop.is_set():
                await self.cycle()
                if self._next_workers is not None:
                    await self._swap_workers(running, start)
                self._wake.clear()
                waiter = asyncio.create_task(self._wake.wait())
                stopper = asyncio.create_task(stop.wait())
                try:
                    await asyncio.wait(
                        {waiter, stopper}, timeout=self.settings.tick_s,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    waiter.cancel()
                    stopper.cancel()
        finally:
            stop.set()
            for _task, own in running.values():
                own.set()
            for task, _own in running.values():
                await sup.finish(task, 10)  # the publish in flight ends; a crash was logged and is raised below
            if self.lease is not None:
                with contextlib.suppress(StoreError):
                    await self.store.release_lease(self.lease[0])
                self.lease = None
            await sup.aclose()  # cancels the event listener; raises TaskCrashedError if a task crashed

    async def _expire_overrides(self, overrides: dict[str, Any], now: float) -> None:
        """The leader deletes drains and cordons past their ``expires_at`` (the engine already
        ignores them) and audits it; one an operator replaced meanwhile is left alone."""
        if not self.is_leader:
            return
        for region, ov in list(overrides.items()):
            if ov.active(now):
                continue
            try:
                if await self.store.delete_override_if(ov):
                    await self.store.append_audit(AuditEntry(
                        ts=now, action=f"{ov.kind} expired", region=region, actor=ov.actor, via="controller",
                        reason=ov.reason, expires_at=ov.expires_at, fencing_token=self.fencing_token,
                        lifted=ov.model_dump(), **self._policy_fields(),
                    ))
                    log.info("%s of %s by %s expired; removed", ov.kind, region, ov.actor)
            except StoreError as exc:
                log.warning("_expire_overrides: %s", exc)
                return

    async def _swap_workers(
        self,
        running: dict[ProviderWorker, tuple[asyncio.Task[None], asyncio.Event]],
        start: Callable[[ProviderWorker], None],
    ) -> None:
        """Replace the provider workers with those built from the new policy: each old one
        finishes the publish it is in, then stops; the new ones start from the routing in force."""
        new, self._next_workers = self._next_workers or [], None
        old = list(self.workers)
        for w in old:
            running[w][1].set()
        for w in old:
            task, _ = running.pop(w)
            await self._tasks.finish(task, 30)
            close = getattr(w.provider, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        self.workers = new
        for w in new:
            start(w)
            if self.is_leader and self.state is not None:
                w.submit(self.state)
        log.info("providers reconfigured: %s", ", ".join(w.name for w in new) or "none")

    def seed_config(self, cfg: Config) -> None:
        """Start from ``cfg`` (e.g. the leader's policy snapshot) when the loader cannot give
        a valid policy yet: it stays in force until the loader's policy validates. The
        providers passed in must have been built from it."""
        self.config = cfg
        self._provider_sig = _provider_signature(cfg)
        self._info_dirty = True

    async def _reconfigure_providers(self, cfg: Config) -> None:
        """Build new providers when the policy's ``providers`` (or zones, owner id) changed.

        A failure to build them (bad credentials file, unknown zone) keeps the providers in
        force, counts a config error and says so in ``last_error``.
        """
        sig = _provider_signature(cfg)
        if self._provider_sig is None or self.provider_factory is None:
            self._provider_sig = sig  # the providers given at start were built from this policy
            return
        if sig == self._provider_sig:
            return
        try:
            # Off the loop: building a provider may import its SDK (boto3, google-cloud-dns).
            providers = list(await asyncio.to_thread(self.provider_factory, cfg.policy))
        except Exception as exc:
            self.stats.config_errors += 1
            self.stats.last_error = f"providers not reconfigured, keeping {[w.name for w in self.workers]}: {exc}"
            self._info_dirty = True
            log.error("_reload_config: %s", self.stats.last_error)
            return
        self._provider_sig = sig
        if self.stats.last_error.startswith("providers not reconfigured"):
            self.stats.last_error = ""
            self._info_dirty = True
        self._next_workers = [self._worker(p) for p in providers]
        self.wake()

    async def _listen(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                async for _event in self.store.events():
                    self._wake.set()
                    backoff = 0.1
            except StoreError as exc:
                log.debug("_listen: event subscription failed (%s); polling continues", exc)
            except asyncio.CancelledError:
                raise
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _load_config(self) -> Config:
        with self._load_lock:
            return self.config_loader()

    async def _reload_config(self) -> None:
        """Ask the loader for the policy in force and apply it when it changed.

        The loader runs in a worker thread, never on the event loop: it reads files, and runs
        ``git`` for a Git-backed policy, while the loop answers DNS queries (embedded server).
        The new config is applied back on the loop.
        """
        try:
            cfg = await asyncio.to_thread(self._load_config)
        except Exception as exc:  # a loader bug must not take the controller (and its DNS) down
            if not isinstance(exc, ConfigError):
                exc = ConfigError([f"policy loader failed: {type(exc).__name__}: {exc}"])
            self.stats.config_errors += 1
            if self.config is None:
                raise exc from None
            kept = self.config.digest[:19] + (f" (commit {self.config.commit[:12]})" if self.config.commit else "")
            msg = f"policy rejected, keeping {kept}: " + "; ".join(exc.reasons)
            if msg != self.stats.last_error:
                log.error("_reload_config: policy rejected (%d problem(s)); keeping %s:\n  %s",
                          len(exc.reasons), kept, "\n  ".join(exc.reasons))
                self.stats.last_error = msg
                self._info_dirty = True
            return
        if self.stats.last_error.startswith("policy rejected"):
            self.stats.last_error = ""
            self._info_dirty = True
        if self.config is None or cfg.digest != self.config.digest or cfg.source != self.config.source:
            if self.config is not None:
                log.info("_reload_config: policy %s %snow in force", cfg.digest[:19],
                         f"(commit {cfg.commit[:12]}) " if cfg.commit else "")
            self.config = cfg
            self._info_dirty = True
            await self._reconfigure_providers(cfg)
            # Zones (SOA, NS, glue) and client prefixes reach local DNS publishers too.
            reconfigurable = [(pub, r) for pub in self.publishers if (r := getattr(pub, "reconfigure", None))]
            if reconfigurable:
                from gtm.providers.embedded_dns import unlocated_segments
                from gtm.providers.geo import PrefixTable

                try:
                    table = await asyncio.to_thread(PrefixTable.from_regions, cfg.inventory.regions.values())
                except Exception as exc:  # keep the DNS config in force
                    log.error("_reload_config: client prefixes rejected, DNS keeps its config: %s", exc)
                    table = None
                for pub, reconfigure in reconfigurable if table is not None else ():
                    try:
                        reconfigure(cfg.policy.zones, table, unlocated=unlocated_segments(cfg.policy.services))
                    except Exception as exc:
                        log.error("_reload_config: %s keeps its DNS config: %s", pub.name, exc)

    async def cycle(self) -> DesiredState | None:
        """One reconcile cycle. Never raises for store, provider or config trouble."""
        self.stats.cycles += 1
        await self._reload_config()
        assert self.config is not None
        try:
            await self._ensure_lease()
            if self._info_dirty and self.is_leader:
                await self._write_info()
            if not self.is_leader:
                await self._follow()
                return self.state
            # Rollout caps come from the rollout driver (it advances the rollouts), and the
            # previous plan is this replica's own unless it just became leader.
            reread = self.state is None or self._reread
            inputs = await read_plan_inputs(
                self.store, planned_regions(self.config.policy, self.config.inventory.regions), previous=reread,
                inventory=self.config.inventory, thresholds=self.config.policy.health,
            )
            if reread:
                # An emptied Redis must not erase what this replica still knows: keep ours.
                self.state = inputs.previous if inputs.previous is not None else self.state
                self._reread = False
            reports, rejected, overrides = inputs.reports, inputs.rejected, inputs.overrides
        except LeaseLostError:
            log.warning("cycle: lease lost; following")
            self.lease = None
            return self.state
        except StoreError as exc:
            self.stats.store_errors += 1
            if self.stats.store_errors == 1 or self.stats.store_errors % 20 == 0:
                log.warning("cycle: store unreachable (%s); holding the last good routing", exc)
            return self.state
        self.stats.rejected_reports += len(rejected)
        previous = self.state
        now = self.clock()
        await self._expire_overrides(overrides, now)
        try:
            caps = await self.caps_provider(self, reports, now) if self.caps_provider is not None else None
            t0 = time.perf_counter()
            new = plan(
                self.config.policy, self.config.inventory, reports, overrides, previous, now,
                digest=self.config.digest, caps=caps, damping_cleared=inputs.damping_cleared,
                cache=self._plan_cache, vantage=inputs.vantage,
            )
            self.stats.plan_seconds.observe(time.perf_counter() - t0)
        except Exception:  # never make things worse: keep serving the last good routing
            self.stats.engine_errors += 1
            if self.stats.engine_errors == 1 or self.stats.engine_errors % 100 == 0:
                log.exception("cycle: planning failed (%d so far); holding the last good routing",
                              self.stats.engine_errors)
            return self.state
        if not new.held and self.clock() - self._leader_since < self.settings.warmup_s:
            missing = [r for r in sorted(self.config.policy.region_names & self.config.inventory.regions.keys())
                       if r not in reports]
            if missing:
                # A new leader (fresh start, failover, or an emptied Redis) that has not heard
                # every agent yet waits up to one heartbeat rather than act on a partial picture.
                log.info("cycle: warming up; waiting for reports from %s", ", ".join(missing))
                return self.state
        self.stats.plans += 1
        self.state = new
        was_held = previous.held if previous is not None else False
        if new.held and not was_held:
            log.warning("cycle: %s", new.hold_reason)
        elif was_held and not new.held:
            log.info("cycle: inputs fresh again; planning resumed")
        if new.decisions and not (new.held and previous is not None and previous.held):
            await self._persist(new)
        await self._publish(new)
        return new

    async def _ensure_lease(self) -> None:
        ttl_ms = int(self.settings.lease_ttl_s * 1000)
        if self.lease is not None:
            await self.store.renew_lease(self.lease[0], ttl_ms)
            return
        got = await self.store.acquire_lease(self.settings.owner, ttl_ms)
        if got is not None:
            self.lease = got
            self._reread = True  # continue from the last leader's state before planning
            self._leader_since = self.clock()
            log.info("_ensure_lease: leader with fencing token %d", got[1])

    async def _write_info(self) -> None:
        """Record the policy in force and any rejection where ``gtm status`` can show it."""
        assert self.config is not None
        info: dict[str, Any] = {
            "owner": self.settings.owner, "policy_digest": self.config.digest, "policy_commit": self.config.commit,
            "policy_rejected": self.stats.last_error if self.stats.last_error.startswith("policy rejected") else "",
            "updated_at": self.clock(),
        }
        await self.store.put_applied("controller", info)
        if self.lease is not None and self._snapshot_digest != self.config.digest:
            from gtm.config.snapshot import dump_snapshot

            await self.store.put_policy_snapshot(dump_snapshot(self.config, self.clock()), lease_value=self.lease[0])
            self._snapshot_digest = self.config.digest
        if info["policy_rejected"]:
            await self.store.append_audit(AuditEntry(
                ts=float(info["updated_at"]), action="policy rejected", reason=str(info["policy_rejected"]),
                actor="controller", via="controller", fencing_token=self.fencing_token, **self._policy_fields(),
            ))
        self._info_dirty = False

    def _policy_fields(self) -> dict[str, str]:
        """The policy in force, for audit entries."""
        if self.config is None:
            return {}
        return {"policy_digest": self.config.digest, "policy_commit": self.config.commit}

    async def _follow(self) -> None:
        stored = await self.store.get_desired()
        if stored is not None:
            self.state = stored
            await self._publish(stored)

    async def _persist(self, state: DesiredState) -> None:
        assert self.lease is not None
        try:
            await self.store.put_desired(state, lease_value=self.lease[0])
            await self.store.append_audit(AuditEntry(
                ts=state.generated_at, generation=state.generation, policy_digest=state.policy_digest,
                policy_commit=self.config.commit if self.config is not None else "",
                fencing_token=self.lease[1], held=state.held, actor="controller", via="controller",
                decisions=[AuditDecision(subject=d.subject, action=d.action, reason=d.reason)
                           for d in state.decisions],
            ))
        except LeaseLostError:
            log.warning("_persist: lease lost; not writing")
            self.lease = None
        except StoreError as exc:
            self.stats.store_errors += 1
            log.warning("_persist: %s", exc)

    async def _publish(self, state: DesiredState) -> None:
        if not state.services:
            return
        if self.is_leader:  # external providers: only the lease holder writes, in the background
            for w in self.workers:
                w.submit(state)
        digest = state.routing_digest()
        for pub in self.publishers:
            if self._applied.get(pub.name) == digest:
                continue
            try:
                wrote = await pub.publish(state)
            except ProviderError as exc:
                self.stats.publish_errors[pub.name] = self.stats.publish_errors.get(pub.name, 0) + 1
                log.error("_publish: %s failed: %s", pub.name, exc)
                continue
            self._applied[pub.name] = digest
            applied_at = self.clock()
            self.published[pub.name] = {"generation": state.generation, "applied_at": applied_at,
                                        "lag_s": max(0.0, applied_at - state.generated_at)}
            if wrote:
                self.stats.publishes[pub.name] = self.stats.publishes.get(pub.name, 0) + 1
                info = {
                    "generation": state.generation,
                    "digest": digest,
                    "applied_at": self.clock(),
                    "fencing_token": self.fencing_token,
                }
                with contextlib.suppress(StoreError):
                    await self.store.put_applied(pub.name, info)


def file_config_loader(policies: str, regions: str) -> Callable[[], Config]:
    """A loader that re-reads the files only when one of them changed (mtime and size)."""
    cache: dict[str, Any] = {}

    def fingerprint() -> tuple[tuple[str, float, int], ...]:
        out = []
        for root in (policies, regions):
            paths = [root] if os.path.isfile(root) else sorted(
                os.path.join(root, f) for f in os.listdir(root) if f.endswith((".yaml", ".yml"))
            ) if os.path.isdir(root) else [root]
            for p in paths:
                try:
                    st = os.stat(p)
                    out.append((p, st.st_mtime, st.st_size))
                except OSError:
                    out.append((p, -1.0, -1))
        return tuple(out)

    def load() -> Config:
        fp = fingerprint()
        if cache.get("fp") == fp:
            if "err" in cache:
                raise cache["err"]
            return cache["cfg"]  # type: ignore[no-any-return]
        try:
            cfg = load_config(policies, regions)
        except ConfigError as exc:
            cache["fp"], cache["err"] = fp, exc
            raise
        cache.pop("err", None)
        cache["fp"], cache["cfg"] = fp, cfg
        return cfg

    return load


def _provider_signature(cfg: Config) -> str:
    """What the record-holding providers are built from: their config, the zones, the owner id."""
    return json.dumps([[p.model_dump(mode="json") for p in cfg.policy.providers],
                       [z.model_dump(mode="json") for z in cfg.policy.zones], cfg.policy.owner_id],
                      sort_keys=True)
