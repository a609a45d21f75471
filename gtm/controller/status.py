"""Read-only views for ``gtm status`` and ``gtm plan``: what Redis holds, and what a plan would do."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from gtm.config.loader import Config
from gtm.engine import plan
from gtm.models.plan import DesiredState
from gtm.store import Store
from gtm.store.inputs import planned_regions, read_plan_inputs


async def gather_status(store: Store, config: Config | None, now: float | None = None) -> dict[str, Any]:
    """Everything ``gtm status`` shows, as a JSON-ready dict.

    A region whose stored report is rejected (malformed or implausible) has
    ``report_rejected`` set to why, and its ``reason`` starts with ``report rejected: <why>``;
    ``rejected_reports`` counts rejections per reason-code (per region in each row, in total
    at the top).

    Args:
        store: the Redis store.
        config: the local policy and inventory; None when the files do not validate (status
            then shows what Redis holds, so an operator is never blind during an incident).
        now: unix seconds.

    Raises:
        StoreError: Redis unreachable.
    """
    now = time.time() if now is None else now
    if config is not None:
        regions = sorted(config.inventory.regions)
        inputs = await read_plan_inputs(store, regions, rollouts=[r.name for r in config.policy.rollouts],
                                        inventory=config.inventory, thresholds=config.policy.health)
    else:
        # No valid local files: every region Redis knows of (the plan in force, overrides).
        known = await read_plan_inputs(store, [])
        regions = sorted(set(known.previous.regions if known.previous is not None else ()) | set(known.overrides))
        read = await store.read_reports(regions)
        inputs = dataclasses.replace(known, reports=read.reports, rejected=read.rejected,
                                     rejected_reasons=read.reasons, server_time=read.server_time)
    reports, overrides, desired = inputs.reports, inputs.overrides, inputs.previous
    leader = await store.leader()
    controller = await store.get_applied("controller") or {}
    rollout_caps: dict[str, list[str]] = {}
    for svc, region_caps in inputs.caps.items():
        for region, cap in region_caps.items():
            rollout_caps.setdefault(region, []).append(f"{svc}: {cap.reason}")
    rejected = await store.rejected_by_reason()
    # The audit entry written with the desired state (controller ``_persist``) carries its
    # commit; other entries (forced drains, rejected policies) may be newer.
    desired_commit = ""
    if desired is not None:
        for _id, fields in await store.read_audit(20):
            if fields.get("generation") == str(desired.generation):
                desired_commit = fields.get("policy_commit", "")
                break
    bgp = await _bgp_states(store, regions)
    providers = {}
    names = ["embedded-dns", *(p.name for p in config.policy.providers)] if config is not None else ["embedded-dns"]
    for name in names:
        info = await store.get_applied(name)
        if info is not None:
            providers[name] = info
    rows = []
    for r in regions:
        st = desired.regions.get(r) if desired is not None else None
        rep = reports.get(r)
        ov = overrides.get(r)
        if ov is not None and not ov.active(now):
            ov = None  # expired: no longer applied (the leader deletes it and audits that)
        last_seen = rep.observed_at if rep is not None else (st.observed_at if st is not None else None)
        refused = inputs.rejected_reasons.get(r)
        reason = st.reason if st is not None else ""
        if refused is not None:
            # The agent may be fine: what sits under its key is refused. Never "agent down".
            reason = f"report rejected: {refused}"
        rows.append(
            {
                "region": r,
                "jurisdiction": config.inventory.regions[r].jurisdiction if config is not None else "?",
                "state": st.state if st is not None else ("reporting" if rep else "unknown"),
                "reason": reason,
                "report_rejected": refused,
                "rejected_reports": rejected.get(r, {}),
                "spare_capacity": round(rep.spare_capacity, 3) if rep is not None else 0.0,
                "capacity_unit": rep.capacity_unit if rep is not None else "replicas",
                "observed_at": last_seen,
                "report_age_s": round(now - last_seen, 3) if last_seen is not None else None,
                "report_expired": rep is None,
                "healthy_check": rep.healthy if rep is not None else None,
                "damped_until": st.damped_until if st is not None and st.damped_until > now else None,
                "rollout": rollout_caps.get(r, []),
                "override": ov.kind if ov is not None else None,
                "override_reason": f"{ov.actor}: {ov.reason}" if ov is not None else "",
                "override_expires_at": ov.expires_at if ov is not None else None,
                "weights": (
                    {pid: p.weight_of(r) for pid, p in desired.pools.items() if any(m.region == r for m in p.members)}
                    if desired is not None
                    else {}
                ),
                "anycast": (
                    {prefix: a.action for prefix, anns in desired.announcements.items() for a in anns if a.region == r}
                    if desired is not None
                    else {}
                ),
            }
        )
    return {
        "now": now,
        "namespace": store.keys.ns,
        "leader": leader,
        "controller": controller,
        "policy_digest": config.digest if config is not None else None,
        "policy_commit": config.commit if config is not None else "",
        "desired": (
            {
                "generation": desired.generation,
                "generated_at": desired.generated_at,
                "held": desired.held,
                "hold_reason": desired.hold_reason,
                "policy_digest": desired.policy_digest,
                "policy_commit": desired_commit,
                "routing_digest": desired.routing_digest(),
            }
            if desired is not None
            else None
        ),
        "regions": rows,
        "pools": pools_with_services(desired) if desired is not None else [],
        "announcements": announcement_rows(desired, bgp) if desired is not None else [],
        "bgp": bgp,
        "providers": providers,
        "rejected_reports": sum(n for by in rejected.values() for n in by.values()),
    }


def partial_line(partial: dict[str, Any]) -> str:
    """One line for a provider's partial apply (the worker's ``partial`` info): ``partial: 1
    applied, 1 failed: zone a.example.com (UPDATE ...: REFUSED: ...); retrying what failed``."""
    failed = partial.get("failed") or {}
    why = "; ".join(f"{unit} ({reason})" for unit, reason in failed.items())
    retry = "retrying what failed" if partial.get("temporary") else "refused for good until fixed; still retrying"
    return f"partial: {len(partial.get('applied') or [])} applied, {len(failed)} failed: {why}; {retry}"


async def plan_now(store: Store, config: Config, now: float | None = None) -> tuple[DesiredState, DesiredState | None]:
    """What the controller would decide now from what Redis holds; writes nothing.

    Returns:
        ``(plan, previous)``, previous being the stored desired state (or None).
    """
    now = time.time() if now is None else now
    inputs = await read_plan_inputs(store, planned_regions(config.policy, config.inventory.regions),
                                    rollouts=[r.name for r in config.policy.rollouts],
                                    inventory=config.inventory, thresholds=config.policy.health)
    state = plan(config.policy, config.inventory, now=now, digest=config.digest, **inputs.plan_kwargs())
    return state, inputs.previous


async def _bgp_states(store: Store, regions: list[str]) -> dict[str, dict[str, Any]]:
    """What each region agent's BGP speaker reported (``gtm:{ns}:bgp:<region>``), as JSON-ready
    dicts by region; {} when none is stored or this store cannot read them."""
    read = getattr(store, "get_bgp_states", None)  # written by `gtm agent --bgp exabgp`
    if read is None or not regions:
        return {}
    states = await read(regions)
    return {r: (st.model_dump(mode="json") if hasattr(st, "model_dump") else dict(st)) for r, st in states.items()}


def announcement_rows(state: DesiredState, bgp: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per (prefix, region): the announcement the plan wants and, when the region's
    agent reported its BGP speaker, what it sent and what ExaBGP acknowledged (``agent``:
    None when no such report is stored).

    Args:
        state: the plan.
        bgp: region → the agent's BGP state as a dict (``BgpState``: ``routes`` by prefix with
            ``sent_action``, ``acked``, ``acked_at``...; ``peers`` by address with ``up``).
    """
    bgp = bgp or {}
    out = []
    for prefix in sorted(state.announcements):
        for a in state.announcements[prefix]:
            agent = bgp.get(a.region)
            route = (agent.get("routes") or {}).get(prefix) if agent is not None else None
            peers = (agent.get("peers") or {}) if agent is not None else {}
            out.append({
                "prefix": prefix,
                "region": a.region,
                "action": a.action,
                "prepend": a.prepend,
                "med": a.med,
                "communities": list(a.communities),
                "share": a.share,
                "planned": a.planned,
                "reason": a.reason,
                "changed_at": a.changed_at,
                "agent": None if agent is None else {
                    "connected": agent.get("connected"),
                    "sessions_up": sum(1 for p in peers.values() if p.get("up")),
                    "sessions": len(peers),
                    "last_ack_at": agent.get("last_ack_at"),
                    "route": route,
                },
            })
    return out


def pools_with_services(state: DesiredState) -> list[dict[str, Any]]:
    """Pools as dicts, each with the services (fqdn/segment) it answers."""
    users: dict[str, list[str]] = {}
    for svc in state.services.values():
        for route in svc.segments:
            users.setdefault(route.pool_id, []).append(f"{svc.fqdn}/{route.segment}")
    out = []
    for pid in sorted(state.pools):
        pool = state.pools[pid]
        out.append(
            {
                "pool_id": pid,
                "segment": pool.segment,
                "mode": pool.mode,
                "reason": pool.reason,
                "members": [
                    {"region": m.region, "weight": m.weight, "reason": m.reason} for m in pool.members
                ],
                "services": users.get(pid, []),
            }
        )
    return out
