"""Operator actions: drain, cordon, undrain and undamp, one function each.

The CLI (``gtm drain`` ...) and the HTTP API (``POST /v1/regions/{region}/drain`` ...) both call
these; the API authenticates first. Each action validates its request, projects it with the
engine's safety rules where it moves traffic, writes compare-and-set (an override another
operator changed meanwhile is never overwritten blindly) and appends one ``AuditEntry``.

Errors (nothing is written when one is raised):

- ``UsageError``: the request is malformed (a blank reason, a value out of range); CLI exit 2,
  HTTP 400.
- ``UnknownRegionError``: the region is not in the inventory; CLI exit 3, HTTP 404.
- ``RefusedError``: well-formed but not possible now (not damped; the override changed under
  us); CLI exit 3, HTTP 409.
- ``StoreError``: Redis failed; CLI exit 1, HTTP 503.

A drain the safety rules would hold is not an error: the outcome says ``refused`` with the
holds and the projection, so a dry run can show them too.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from gtm.config.loader import Config
from gtm.controller.drain import DrainProjection, project_drain
from gtm.errors import RefusedError, StoreError, UnknownRegionError, UsageError
from gtm.log import get_logger
from gtm.models.audit import AuditEntry, Via
from gtm.models.override import Override
from gtm.models.plan import DesiredState
from gtm.store.inputs import planned_regions, read_plan_inputs
from gtm.store.store import Store

log = get_logger("controller.actions")

MAX_REASON = 500
"""Longest reason accepted, characters (it is shown in status and the audit stream)."""
MAX_EXPIRES_IN_S = 31_536_000
"""Longest override expiry accepted, seconds (one year)."""
CAS_ATTEMPTS = 5
"""How often an undrain re-reads an override that changed under it before it refuses."""


class DrainOrder(BaseModel):
    """A request to drain or cordon a region (the CLI's options, the API's JSON body).

    Attributes:
        region: the region, e.g. ``eu-west-1``.
        kind: ``drain`` (step the weight to 0) or ``cordon`` (never raise it).
        reason: why, 1-500 characters, not blank (status and audit).
        actor: who asks, 1-100 characters.
        expires_in: lift the override by itself after this many seconds (1 s to 1 year), or None.
        force: drain even when the safety rules would hold it (audited with the holds).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    region: str = Field(min_length=1, max_length=100)
    kind: Literal["drain", "cordon"] = "drain"
    reason: str = Field(min_length=1, max_length=MAX_REASON)
    actor: str = Field(default="unknown", min_length=1, max_length=100)
    expires_in: float | None = Field(default=None, ge=1, le=MAX_EXPIRES_IN_S)
    force: StrictBool = False

    @field_validator("reason")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank (it is shown in status and audit)")
        return v

    @classmethod
    def parse(cls, data: dict[str, Any], *, via: Via) -> DrainOrder:
        """Validate ``data``. Raises ``UsageError`` naming each bad field (as ``--field`` when
        ``via`` is ``cli``) and why."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = _problems(exc, cli=via == "cli")
            raise UsageError("invalid drain request: " + "; ".join(problems), problems) from None

    def override(self, now: float) -> Override:
        """The override this order writes, set at ``now`` (unix seconds)."""
        return Override(
            region=self.region, kind=self.kind, reason=self.reason, actor=self.actor, since=now,
            expires_at=now + self.expires_in if self.expires_in is not None else None, force=self.force,
        )


@dataclass
class DrainOutcome:
    """What a drain did or would do.

    Attributes:
        override: the override written (or that would be).
        written: whether it was written.
        refused: the safety rules hold it and ``force`` was not given (nothing written).
        projection: the drain played forward (None without valid local policy files).
        replaces: the override it replaced, if any.
        audit: the audit entry written (None when nothing was written).
        warning: a note for the operator (e.g. no projection was possible).
    """

    override: Override
    written: bool
    refused: bool
    projection: DrainProjection | None
    replaces: Override | None = None
    audit: AuditEntry | None = None
    warning: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The ``gtm drain -o json`` document."""
        proj = self.projection or DrainProjection(unit="")
        out: dict[str, Any] = {
            "override": self.override.model_dump(), "written": self.written, "refused": self.refused,
            "held_by_safety": proj.held, "projected_shares": proj.shares, "projected_load": proj.loads,
            "capacity_unit": proj.unit, "steps": proj.steps,
            "replaces": self.replaces.model_dump() if self.replaces is not None else None,
        }
        if self.warning:
            out["warning"] = self.warning
        return out


@dataclass
class UndrainOutcome:
    """What an undrain did: ``removed`` whether an override was removed, ``lifted`` that
    override as stored (None when there was none, or it could not be parsed)."""

    region: str
    removed: bool
    lifted: Override | None
    audit: AuditEntry | None = None


@dataclass
class UndampOutcome:
    """An undamp that was done: cleared at ``at`` (unix seconds) a penalty that would have run
    until ``was_damped_until``; ``state`` is the region's health state then."""

    region: str
    at: float
    was_damped_until: float
    state: str
    audit: AuditEntry = field(repr=False)

    @property
    def remaining_s(self) -> float:
        return self.was_damped_until - self.at


async def drain(
    store: Store,
    cfg: Config | None,
    order: DrainOrder,
    *,
    via: Via,
    dry_run: bool = False,
    now: float | None = None,
) -> DrainOutcome:
    """Drain or cordon ``order.region``.

    With ``cfg`` (valid policy files) the drain is first played forward against what Redis
    holds (``project_drain``, in a thread: it plans up to a few hundred times and must not
    block an event loop that answers DNS). Without ``cfg`` (local files invalid) the region is
    checked against the plan in force, the override is written without a projection, and the
    controller still applies its safety rules.

    Raises:
        UnknownRegionError: the region is not in the inventory (or, without ``cfg``, not in
            the plan in force).
        RefusedError: the stored override changed between the read and the write.
        StoreError: Redis failed.
    """
    now = time.time() if now is None else now
    region = order.region
    ov = order.override(now)
    if cfg is not None:
        if region not in cfg.inventory.regions:
            raise UnknownRegionError(f"unknown region {region!r}; known: {', '.join(sorted(cfg.inventory.regions))}")
        inputs = await read_plan_inputs(store, planned_regions(cfg.policy, cfg.inventory.regions),
                                        rollouts=[r.name for r in cfg.policy.rollouts],
                                        inventory=cfg.inventory, thresholds=cfg.policy.health)
        projection: DrainProjection | None = await asyncio.to_thread(
            project_drain, cfg, inputs, ov.model_copy(update={"force": False}), now)
        warning = ""
    else:
        inputs = await read_plan_inputs(store, [])
        known = sorted(inputs.previous.regions) if inputs.previous is not None else []
        if region not in known:
            raise UnknownRegionError(
                f"unknown region {region!r}; the controller plans {', '.join(known) or 'nothing yet'}")
        projection = None
        warning = "local policy files invalid: no projection; the controller applies its safety rules"
    held = projection.held if projection is not None else []
    refused = bool(held) and not order.force
    replaces = inputs.overrides.get(region)
    out = DrainOutcome(override=ov, written=False, refused=refused, projection=projection, replaces=replaces,
                       warning=warning)
    if refused or dry_run:
        return out
    if not await store.put_override_if(ov, expect=replaces):
        raise RefusedError(f"the override of {region} changed while this {order.kind} was being checked; "
                           "nothing written: look at `gtm status` and try again")
    out.written = True
    out.audit = AuditEntry(
        ts=now, action=ov.kind + (" --force" if order.force else ""), region=region, actor=ov.actor,
        reason=ov.reason, via=via, expires_at=ov.expires_at, overridden_safety=held if order.force else [],
        replaces=replaces.model_dump() if replaces is not None else None, note=warning,
        **_policy_fields(cfg, inputs.previous),
    )
    await store.append_audit(out.audit)
    return out


async def undrain(
    store: Store,
    cfg: Config | None,
    region: str,
    *,
    actor: str,
    reason: str = "",
    via: Via,
    now: float | None = None,
) -> UndrainOutcome:
    """Lift ``region``'s drain or cordon (compare-and-delete: an override replaced meanwhile
    is read again, never deleted unseen); the weight then ramps back in planned steps.

    Returns:
        The outcome; ``removed`` is False when the region had no override (nothing written).

    Raises:
        UsageError: ``reason`` longer than 500 characters, or ``actor`` empty / over 100.
        UnknownRegionError: ``cfg`` given and the region is not in its inventory.
        RefusedError: the override kept changing under us.
        StoreError: Redis failed.
    """
    _check_text(reason=reason, actor=actor, reason_required=False, via=via)
    if cfg is not None and region not in cfg.inventory.regions:
        raise UnknownRegionError(f"unknown region {region!r}; known: {', '.join(sorted(cfg.inventory.regions))}")
    for _ in range(CAS_ATTEMPTS):
        lifted = await store.get_override(region)
        if lifted is None:
            # Nothing parseable stored: remove whatever is there, so a corrupt key cannot linger.
            if not await store.delete_override(region):
                return UndrainOutcome(region=region, removed=False, lifted=None)
            break
        if await store.delete_override_if(lifted):
            break
    else:
        raise RefusedError(f"the override of {region} kept changing; nothing lifted: try again")
    now = time.time() if now is None else now
    # Nothing is judged against a policy here: record the plan's in force.
    entry = AuditEntry(ts=now, action="undrain", region=region, actor=actor, reason=reason, via=via,
                       lifted=lifted.model_dump() if lifted is not None else None,
                       note="" if lifted is not None else "removed an override that could not be parsed",
                       **_policy_fields(None, await store.get_desired()))
    try:
        await store.append_audit(entry)
    except StoreError as exc:  # the override is gone already: say so rather than fail the undrain
        log.warning("undrain %s: not written to the audit stream: %s", region, exc)
    return UndrainOutcome(region=region, removed=True, lifted=lifted, audit=entry)


async def undamp(
    store: Store,
    region: str,
    *,
    actor: str,
    reason: str,
    via: Via,
    now: float | None = None,
) -> UndampOutcome:
    """Clear ``region``'s flap damping before its penalty runs out (its past transitions stop
    counting; a healthy region ramps back in planned steps).

    Raises:
        UsageError: ``reason`` blank or over 500 characters.
        UnknownRegionError: the controller's plan in force does not name the region.
        RefusedError: the region is not damped now.
        StoreError: Redis failed.
    """
    _check_text(reason=reason, actor=actor, reason_required=True, via=via)
    now = time.time() if now is None else now
    state = await store.get_desired()
    status = state.regions.get(region) if state is not None else None
    if status is None:
        known = ", ".join(sorted(state.regions)) if state is not None else "nothing yet"
        raise UnknownRegionError(f"unknown region {region!r}; the controller plans {known}")
    if status.damped_until <= now:
        raise RefusedError(f"{region} is not damped")
    await store.clear_damping(region, now, actor, reason)
    entry = AuditEntry(ts=now, action="undamp", region=region, actor=actor, reason=reason, via=via,
                       damped_until=status.damped_until, **_policy_fields(None, state))
    await store.append_audit(entry)
    return UndampOutcome(region=region, at=now, was_damped_until=status.damped_until, state=status.state,
                         audit=entry)


def _check_text(*, reason: str, actor: str, reason_required: bool, via: Via) -> None:
    """Raise ``UsageError`` for a reason or actor out of bounds, named as the caller knows
    them (``--reason`` on the command line, ``reason`` in a JSON body)."""
    opt = "--" if via == "cli" else ""
    if len(reason) > MAX_REASON or (reason_required and not reason.strip()):
        raise UsageError(f"{opt}reason must be {'1' if reason_required else '0'}-{MAX_REASON} characters, "
                         "not blank (it is written to the audit stream)")
    if not actor.strip() or len(actor) > 100:
        raise UsageError(f"{opt}actor must be 1-100 characters")


def _policy_fields(cfg: Config | None, state: DesiredState | None) -> dict[str, Any]:
    """The policy the actor acted under: its local files when valid, else the plan in force."""
    if cfg is not None:
        return {"policy_digest": cfg.digest, "policy_commit": cfg.commit}
    if state is not None:
        return {"policy_digest": state.policy_digest}
    return {}


def _problems(exc: ValidationError, *, cli: bool) -> list[str]:
    def name(loc: tuple[int | str, ...]) -> str:
        field_name = ".".join(map(str, loc)) or "body"
        return "--" + field_name.replace("_", "-") if cli and loc else field_name

    return [f"{name(e['loc'])}: {e['msg']}" for e in exc.errors()]


__all__ = [
    "DrainOrder", "DrainOutcome", "UndampOutcome", "UndrainOutcome", "drain", "undamp", "undrain",
]
