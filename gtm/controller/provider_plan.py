"""``gtm plan --providers`` / ``gtm apply``: what each DNS provider of the policy would change to
serve a desired state, and applying it (dry run unless asked)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gtm.errors import ConfigError, GtmError, PartialApplyError, ProviderError
from gtm.models.plan import DesiredState
from gtm.models.policy import Policy
from gtm.providers.base import Provider
from gtm.providers.records import Change, Plan
from gtm.providers.registry import build_provider


@dataclass
class ProviderOutcome:
    """One provider's plans (and results, when applied), or the error that stopped it.

    ``error`` is ``ErrorType: message``, the message naming the provider, its kind, the server
    and the operation (``ProviderError``'s ``str``), or ``""``.
    """

    name: str
    kind: str
    plans: list[Plan] = field(default_factory=list)
    applied: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    failed: dict[str, str] = field(default_factory=dict)
    """When applying: zone (or, for a partial apply inside a zone, record set) → why it failed;
    the other zones were still applied."""

    def to_dict(self, max_changes: int = 50) -> dict[str, Any]:
        return {
            "provider": self.name, "kind": self.kind, "error": self.error, "failed": self.failed,
            "zones": [
                {
                    "zone": p.zone, "summary": p.summary(), "owned_before": p.owned_before,
                    "conflicts": list(p.conflicts),
                    "changes": [_change(c) for c in p.changes[:max_changes]],
                    "more_changes": max(0, len(p.changes) - max_changes),
                }
                for p in self.plans
            ],
            "applied": self.applied,
        }


def _change(c: Change) -> dict[str, Any]:
    rs = c.record
    return {
        "action": c.action, "name": rs.name, "type": rs.rdtype, "set_identifier": rs.set_identifier,
        "old": list(c.old.values) if c.old else None, "new": list(c.new.values) if c.new else None,
        "weight": rs.weight, "ttl": rs.ttl,
    }


async def plan_providers(
    policy: Policy, state: DesiredState, names: Sequence[str] = (), providers: Sequence[Provider] | None = None
) -> list[ProviderOutcome]:
    """Observe and plan every record-holding provider of ``policy`` (or only ``names``); no write."""
    return await _each_provider(policy, state, names, providers, apply=False, force=False)


async def apply_providers(
    policy: Policy, state: DesiredState, *, force: bool, names: Sequence[str] = (),
    providers: Sequence[Provider] | None = None,
) -> list[ProviderOutcome]:
    """Plan and apply for real; a plan touching too much of a zone is refused unless ``force``."""
    return await _each_provider(policy, state, names, providers, apply=True, force=force)


async def _each_provider(
    policy: Policy, state: DesiredState, names: Sequence[str], providers: Sequence[Provider] | None,
    *, apply: bool, force: bool,
) -> list[ProviderOutcome]:
    """Plan (and with ``apply``, apply) per provider; one provider's error never stops the others."""
    out = []
    cfgs = [p for p in policy.providers if p.kind != "embedded" and (not names or p.name in names)]
    built = {p.name: p for p in providers or ()}
    for cfg in cfgs:
        res = ProviderOutcome(cfg.name, cfg.kind)
        try:
            prov = built.get(cfg.name) or build_provider(cfg, policy)
            res.plans = await prov.plan_state(state)
            if apply:
                await _apply_each_zone(prov, res, force=force)
        except (ProviderError, ConfigError) as exc:  # each names the provider itself
            res.error = f"{type(exc).__name__}: {exc}"
        except GtmError as exc:
            res.error = f"{type(exc).__name__}: {cfg.name} ({cfg.kind}): {exc}"
        out.append(res)
    return out


async def _apply_each_zone(prov: Provider, res: ProviderOutcome, *, force: bool) -> None:
    """Apply ``res.plans`` zone by zone: a zone the provider refuses never holds back the others
    (its reason goes to ``res.failed``, every error's text to ``res.error``). An unsafe plan in
    any zone stops everything before the first write.

    Raises:
        UnsafePlanError: a zone's plan touches too much of it and ``force`` is not set.
    """
    for plan in res.plans:
        try:
            if not plan.empty:
                plan.raise_if_unsafe(prov.max_change_fraction, force=force)
        except ProviderError as exc:
            prov.context(exc, f"apply {plan.zone}")  # the same exception, naming provider and server
            raise
    errors: list[str] = []
    for plan in res.plans:
        try:
            r = await prov.apply(plan, dry_run=False, force=force)
        except PartialApplyError as exc:
            res.failed.update(exc.failed)
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        except ProviderError as exc:
            res.failed[f"zone {plan.zone}"] = ": ".join(p for p in (exc.operation, exc.detail) if p)
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        res.applied.append({"zone": plan.zone, "api_calls": r.api_calls, "changes": r.changes})
    res.error = "; ".join(errors)
