"""The rollout driver: runs the rollout state machine (``gtm.engine.rollout``) once per
controller cycle and hands the engine its weight caps. Thin: Redis in, pure step, Redis out.

Wiring (``Controller(..., caps_provider=RolloutDriver(store))``): the controller calls the
driver with itself, the cycle's reports and its clock right before ``plan()``; the driver
reads every rollout named in the policy (and any it drove before), advances each, writes the
new state back **compare-and-set and fenced by the controller's lease**, appends one audit
entry per step, and returns ``service → region → WeightCap`` for ``plan(..., caps=...)``.

A transition counts only once it is stored: if the write is refused (lease lost, or an
operator's command changed the state in between) the caps of the state as stored are used,
and the next cycle starts again from what Redis holds. So a new leader continues exactly
where the last stored step left off, and no step is made twice. When Redis cannot be read
the last caps are kept (static stability).

Operators' commands (``gtm rollout start|pause|resume|abort``) use :func:`update`, the same
compare-and-set without a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

from gtm.engine import rollout as machine
from gtm.engine.rollout import RolloutState
from gtm.errors import LeaseLostError, RolloutError, StoreError
from gtm.log import get_logger
from gtm.models.audit import AuditDecision, AuditEntry
from gtm.models.plan import DesiredState
from gtm.models.policy import Policy
from gtm.models.report import FleetReport
from gtm.store.rollouts import Caps, caps_of, dump, load, parse
from gtm.store.rollouts import current_caps as store_current_caps
from gtm.store.store import Store

log = get_logger("controller.rollout")

__all__ = ["Caps", "RolloutDriver", "caps_of", "current_caps", "dump", "load", "parse", "update"]
_GATE_STATS = "scipy.stats"  # what gtm.engine.gates imports lazily to compare samples


async def current_caps(store: Store, policy: Policy) -> Caps:
    """The caps the stored rollouts of ``policy`` impose now, without advancing them."""
    return await store_current_caps(store, [r.name for r in policy.rollouts])


async def update(
    store: Store,
    name: str,
    change: Callable[[RolloutState | None], RolloutState],
    *,
    attempts: int = 20,
) -> RolloutState:
    """Read-modify-write one rollout with compare-and-set (operators' commands).

    Args:
        change: the new state from the stored one (None if there is none); raise
            ``RolloutError`` to refuse. Any other exception is a bug and propagates.

    Raises:
        RolloutError: ``change`` refused, or the state kept changing under us.
        StoreError: Redis failed.
    """
    for _ in range(attempts):
        text = (await store.get_rollouts([name])).get(name)
        current = parse(name, text) if text is not None else None
        new = change(current)
        new = new.model_copy(update={"rev": (current.rev if current else 0) + 1})
        if await store.put_rollout(name, dump(new), expect=text):
            return new
        await asyncio.sleep(0.05)
    raise RolloutError(f"rollout {name} kept changing; try again")


class RolloutDriver:
    """Advances the stored rollouts on each leader cycle; the controller's ``caps_provider``.

    Attributes:
        store: the Redis store.
        states: the rollouts as last stored (or read), by name.
        conflicts: writes refused because the state changed under us (operator commands).
        store_errors: cycles in which Redis could not be read or written.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.states: dict[str, RolloutState] = {}
        self.conflicts = 0
        self.store_errors = 0
        self._caps: Caps = {}

    def caps(self) -> Caps:
        """The caps of the last tick: service → region → ``WeightCap``."""
        return self._caps

    async def __call__(self, controller: Any, reports: Mapping[str, FleetReport], now: float) -> Caps:
        """The controller hook: tick with the controller's policy, lease and clock."""
        cfg = controller.config
        if cfg is None:
            return self._caps
        return await self.tick(cfg.policy, reports, now, controller.lease, routing=controller.state)

    async def tick(
        self,
        policy: Policy,
        reports: Mapping[str, FleetReport],
        now: float,
        lease: tuple[str, int] | None,
        routing: DesiredState | None = None,
    ) -> Caps:
        """Advance every rollout once and return the caps to plan with.

        Args:
            policy: the policy in force (which rollouts to look at).
            reports: the cycle's reports.
            now: the controller's clock, unix seconds.
            lease: ``(lease_value, fencing_token)`` of the leader; without one nothing is
                written (the stored states' caps are returned).
            routing: the routing in force (the controller's last plan): a deploy drain is
                complete only once it shows the region at weight 0.
        """
        names = sorted({r.name for r in policy.rollouts} | self.states.keys())
        try:
            stored = await load(self.store, names)
        except StoreError as exc:
            self.store_errors += 1
            log.warning("tick: cannot read rollouts (%s); keeping the last caps", exc)
            return self._caps
        if stored and lease is not None and _GATE_STATS not in sys.modules:
            # The gates' statistics import scipy (~1 s) on first use; do it off the event loop,
            # which also answers DNS, before the first step that may compare samples.
            await asyncio.to_thread(importlib.import_module, _GATE_STATS)
        states: dict[str, RolloutState] = {}
        for name, (st, text) in stored.items():
            states[name] = st
            if lease is None:
                continue
            new = machine.advance(st, reports, now, token=lease[1],
                                  weights=machine.service_weights(routing, st.spec.service))
            if new is st:
                continue
            new = new.model_copy(update={"rev": st.rev + 1, "updated_at": now})
            try:
                ok = await self.store.put_rollout(name, dump(new), expect=text, lease_value=lease[0])
            except LeaseLostError:
                log.warning("tick: lease lost; rollout %s not advanced", name)
                continue
            except StoreError as exc:
                self.store_errors += 1
                log.warning("tick: rollout %s not written (%s); its stored state stands", name, exc)
                continue
            if not ok:
                self.conflicts += 1
                log.info("tick: rollout %s changed under us; re-reading next cycle", name)
                continue
            states[name] = new
            await self._audit(st, new, lease[1])
        self.states = states
        self._caps = caps_of(states)
        return self._caps

    async def _audit(self, old: RolloutState, new: RolloutState, token: int) -> None:
        for rec in new.history[len(old.history):]:
            log.info("rollout %s step %d: %s%s (%s)", new.name, rec.step, f"{rec.region} → " if rec.region else "",
                     rec.phase, rec.reason)
            entry = AuditEntry(
                ts=rec.at, rollout=new.name, step=rec.step, fencing_token=token, actor="controller",
                via="controller", region=rec.region or None,
                decisions=[AuditDecision(subject=f"rollout {new.name}" + (f" {rec.region}" if rec.region else ""),
                                         action=rec.phase, reason=rec.reason)],
            )
            with contextlib.suppress(StoreError):
                await self.store.append_audit(entry)
