"""Stored rollout states: read and parse them, and the weight caps they impose.

Rollout state is stored as the JSON text of ``gtm.engine.rollout.RolloutState``
(``Store.get_rollouts`` / ``Store.put_rollout``); this module is the one place that turns the
text into states. An unreadable state is logged and left out, never raised: one corrupt key
must not stop the controller from planning the other services.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError

from gtm.engine import rollout as machine
from gtm.engine.rollout import RolloutState
from gtm.log import get_logger
from gtm.models.rollout import WeightCap
from gtm.store.store import Store

log = get_logger("store.rollouts")

Caps = dict[str, dict[str, WeightCap]]
"""Weight caps: service name → region → ``WeightCap``."""


def parse(name: str, text: str) -> RolloutState | None:
    """A stored rollout state, or None (logged) when it cannot be read."""
    try:
        return RolloutState.model_validate_json(text)
    except ValidationError as exc:
        log.error("parse: stored rollout %s unreadable, ignoring it: %s", name, str(exc).splitlines()[0])
        return None


def dump(state: RolloutState) -> str:
    """The stored form of ``state`` (JSON text)."""
    return state.model_dump_json()


def caps_of(states: Mapping[str, RolloutState]) -> Caps:
    """Weight caps of every rollout, per service (one active rollout per service)."""
    out: Caps = {}
    for st in states.values():
        c = machine.caps(st)
        if c:
            out.setdefault(st.spec.service, {}).update(c)
    return out


async def load(store: Store, names: list[str]) -> dict[str, tuple[RolloutState, str]]:
    """Stored rollouts by name: ``(state, text as stored)``; unreadable ones left out.
    Raises ``StoreError``."""
    out = {}
    for name, text in (await store.get_rollouts(names)).items():
        st = parse(name, text)
        if st is not None:
            out[name] = (st, text)
    return out


async def current_caps(store: Store, names: list[str]) -> Caps:
    """The caps the stored rollouts ``names`` impose now, without advancing them.
    Raises ``StoreError``."""
    states = await load(store, names)
    return caps_of({n: s for n, (s, _) in states.items()})
