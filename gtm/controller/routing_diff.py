"""The routing difference between two desired states: what a reviewer of a policy change sees.

``routing_diff(before, after)`` is a pure function comparing, per service fqdn and segment, the
effective weight of every region (the weights of the pool the segment's route points at), plus
services and segments added or removed, client matches, residency pins, pool modes (dark,
fail-static...), TTLs, and the pools that appear or disappear. ``plan_pair`` plans the policy in
force and a candidate from the same inputs, so only the policy differs.

Used by ``gtm plan --candidate``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gtm.config.loader import Config
from gtm.engine import plan
from gtm.models.override import Override
from gtm.models.plan import Announcement, DesiredState, PoolPlan, SegmentRoute, ServicePlan
from gtm.models.report import FleetReport, ModelStats, VantageReport
from gtm.store import Store
from gtm.store.inputs import read_plan_inputs

KINDS = (
    "service-added", "service-removed", "segment-added", "segment-removed", "match", "residency",
    "ttl", "mode", "weight", "pool-added", "pool-removed", "announcement",
)
"""Every ``RoutingChange.kind``, in the order changes are listed for one service/segment."""


@dataclass(frozen=True, slots=True)
class RoutingChange:
    """One difference in routing.

    Attributes:
        kind: one of ``KINDS``.
        fqdn: the service (empty for pool changes).
        segment: the segment (empty for service- and pool-level changes).
        region: the region, for ``weight`` changes.
        before: the old value: a weight (int), a residency pin or match (list), a TTL, a mode,
            a segment's weights ``{region: weight}``, a service's ``{segment: {region: weight}}``;
            None when absent.
        after: the new value, likewise.
        share_before: the region's share of its segment's traffic before (0..1), for weights.
        share_after: the share after.
        pool_id: the pool concerned (pool changes; the new pool for weight changes).
        detail: a short human explanation (``left the pool``, ``used by chat.example.com/eu``).
    """

    kind: str
    fqdn: str = ""
    segment: str = ""
    region: str = ""
    before: Any = None
    after: Any = None
    share_before: float | None = None
    share_after: float | None = None
    pool_id: str = ""
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def describe(self) -> str:
        """One line for people."""
        where = self.fqdn + (f"/{self.segment}" if self.segment else "")
        if self.kind == "weight":
            return (
                f"{where}: {self.region} {_w(self.before, self.share_before)} → {_w(self.after, self.share_after)}"
                + (f" ({self.detail})" if self.detail else "")
            )
        if self.kind == "announcement":
            return f"anycast {self.detail}: {self.region} {_fmt(self.before)} → {_fmt(self.after)}"
        if self.kind in ("pool-added", "pool-removed"):
            return f"{self.kind.replace('-', ' ')} {self.pool_id}" + (f" ({self.detail})" if self.detail else "")
        if self.kind in ("service-added", "segment-added"):
            return f"{where}: {self.kind.split('-')[0]} added: {_fmt(self.after)}"
        if self.kind in ("service-removed", "segment-removed"):
            return f"{where}: {self.kind.split('-')[0]} removed (was {_fmt(self.before)})"
        return f"{where}: {self.kind} {_fmt(self.before)} → {_fmt(self.after)}"


def _w(weight: int | None, share: float | None) -> str:
    if weight is None:
        return "absent"
    return f"{weight}" + (f" ({share:.0%})" if share is not None else "")


def _fmt(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) or "{}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(map(str, v)) + "]"
    return str(v)


def _weights(pool: PoolPlan | None) -> dict[str, int]:
    return {m.region: m.weight for m in pool.members} if pool is not None else {}


def _shares(weights: Mapping[str, int]) -> dict[str, float]:
    total = sum(weights.values())
    return {r: (w / total if total else 0.0) for r, w in weights.items()}


def _routes(svc: ServicePlan) -> dict[str, SegmentRoute]:
    return {r.segment: r for r in svc.segments}


def _segment_weights(state: DesiredState, svc: ServicePlan) -> dict[str, dict[str, int]]:
    return {r.segment: _weights(state.pools.get(r.pool_id)) for r in svc.segments}


def routing_diff(before: DesiredState, after: DesiredState) -> list[RoutingChange]:
    """Every routing difference from ``before`` to ``after``, in a stable order.

    Per service (by fqdn) and segment: added/removed, client match, residency pin, TTL, pool
    mode, and each region whose effective weight differs (a region outside the pool counts as
    weight 0; ``before``/``after`` is None when it is not a member). Then pools used by some
    service in only one of the states. Equal states give ``[]``.
    """
    out: list[RoutingChange] = []
    for fqdn in sorted(before.services.keys() | after.services.keys()):
        b_svc, a_svc = before.services.get(fqdn), after.services.get(fqdn)
        if b_svc is None and a_svc is not None:
            out.append(RoutingChange("service-added", fqdn, after=_segment_weights(after, a_svc)))
            continue
        if a_svc is None and b_svc is not None:
            out.append(RoutingChange("service-removed", fqdn, before=_segment_weights(before, b_svc)))
            continue
        assert b_svc is not None and a_svc is not None
        if b_svc.ttl != a_svc.ttl:
            out.append(RoutingChange("ttl", fqdn, before=b_svc.ttl, after=a_svc.ttl))
        b_routes, a_routes = _routes(b_svc), _routes(a_svc)
        order = [r.segment for r in a_svc.segments] + [s for s in b_routes if s not in a_routes]
        for seg in order:
            out.extend(_segment_diff(before, after, fqdn, seg, b_routes.get(seg), a_routes.get(seg)))
    out.extend(_pool_diff(before, after))
    out.extend(_announcement_diff(before, after))
    return out


def _announcement_label(a: Announcement | None) -> str | None:
    if a is None:
        return None
    return f"announce +{a.prepend} MED {a.med}" if a.action == "announce" else "withdraw"


def _announcement_diff(before: DesiredState, after: DesiredState) -> list[RoutingChange]:
    """Per anycast prefix and region, the announcement that differs (``detail`` is the prefix;
    ``before``/``after`` ``announce +N MED M``, ``withdraw`` or None when absent)."""
    out = []
    for prefix in sorted(before.announcements.keys() | after.announcements.keys()):
        b = {a.region: a for a in before.announcements.get(prefix, ())}
        a_ = {a.region: a for a in after.announcements.get(prefix, ())}
        for region in sorted(b.keys() | a_.keys()):
            was, now = _announcement_label(b.get(region)), _announcement_label(a_.get(region))
            if was != now:
                out.append(RoutingChange("announcement", region=region, before=was, after=now, detail=prefix))
    return out


def _segment_diff(
    before: DesiredState,
    after: DesiredState,
    fqdn: str,
    seg: str,
    b: SegmentRoute | None,
    a: SegmentRoute | None,
) -> list[RoutingChange]:
    if b is None and a is not None:
        return [
            RoutingChange("segment-added", fqdn, seg, after=_weights(after.pools.get(a.pool_id)), pool_id=a.pool_id)
        ]
    if a is None and b is not None:
        return [
            RoutingChange("segment-removed", fqdn, seg, before=_weights(before.pools.get(b.pool_id)), pool_id=b.pool_id)
        ]
    assert a is not None and b is not None
    out: list[RoutingChange] = []
    b_match = [*b.continents, *b.countries]
    a_match = [*a.continents, *a.countries]
    if (b.continents, b.countries) != (a.continents, a.countries):
        out.append(RoutingChange("match", fqdn, seg, before=b_match, after=a_match))
    if b.jurisdictions != a.jurisdictions:
        out.append(RoutingChange("residency", fqdn, seg, before=list(b.jurisdictions), after=list(a.jurisdictions)))
    b_pool, a_pool = before.pools.get(b.pool_id), after.pools.get(a.pool_id)
    b_mode = b_pool.mode if b_pool is not None else None
    a_mode = a_pool.mode if a_pool is not None else None
    if b_mode != a_mode:
        out.append(RoutingChange("mode", fqdn, seg, before=b_mode, after=a_mode, pool_id=a.pool_id,
                                 detail=a_pool.reason if a_pool is not None else ""))
    bw, aw = _weights(b_pool), _weights(a_pool)
    bs, as_ = _shares(bw), _shares(aw)
    for region in sorted(bw.keys() | aw.keys()):
        wb, wa = bw.get(region), aw.get(region)
        if (wb or 0) == (wa or 0):
            continue  # same weight (a member at 0 and a non-member both receive nothing)
        if wb is None:
            detail = "joined the pool"
        elif wa is None:
            detail = "left the pool"
        else:
            detail = "gains weight" if (wa or 0) > (wb or 0) else "loses weight"
        out.append(
            RoutingChange(
                "weight", fqdn, seg, region, before=wb, after=wa,
                share_before=round(bs.get(region, 0.0), 4), share_after=round(as_.get(region, 0.0), 4),
                pool_id=a.pool_id, detail=detail,
            )
        )
    return out


def _users(state: DesiredState) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for svc in state.services.values():
        for route in svc.segments:
            users.setdefault(route.pool_id, []).append(f"{svc.fqdn}/{route.segment}")
    return users


def _pool_diff(before: DesiredState, after: DesiredState) -> list[RoutingChange]:
    b_users, a_users = _users(before), _users(after)
    out = []
    for pid in sorted(b_users.keys() - a_users.keys()):
        out.append(RoutingChange("pool-removed", pool_id=pid, before=_weights(before.pools.get(pid)),
                                 detail="was used by " + ", ".join(sorted(b_users[pid]))))
    for pid in sorted(a_users.keys() - b_users.keys()):
        out.append(RoutingChange("pool-added", pool_id=pid, after=_weights(after.pools.get(pid)),
                                 detail="used by " + ", ".join(sorted(a_users[pid]))))
    return out


# -- planning both sides ------------------------------------------------------------------------


def nominal_reports(configs: list[Config], now: float) -> dict[str, FleetReport]:
    """A fresh, healthy report with equal spare capacity for every region and served model.

    For comparing policies without a live fleet (``gtm plan --candidate --assume-healthy``, CI):
    capacity-routed pools then split evenly and static ones follow their weights.
    """
    models = {s.model for c in configs for s in c.policy.services if s.model is not None}
    regions = sorted({r for c in configs for r in c.inventory.regions})
    return {
        r: FleetReport(
            region=r, agent_id="gtm-plan-nominal", seq=1, observed_at=now, interval_s=1.0, healthy=True,
            consecutive_ok=1000,
            models={m: ModelStats(model=m, replicas_total=1, replicas_healthy=1, spare_capacity=1.0) for m in models},
            spare_capacity=1.0,
        )
        for r in regions
    }


def plan_pair(
    in_force: Config,
    candidate: Config,
    reports: Mapping[str, FleetReport],
    overrides: Mapping[str, Override],
    previous: DesiredState | None,
    now: float,
    damping_cleared: Mapping[str, float] | None = None,
    vantage: Mapping[str, VantageReport] | None = None,
) -> tuple[DesiredState, DesiredState]:
    """Plan the policy in force and the candidate from the same inputs (pure);
    ``damping_cleared`` and ``vantage`` as for ``engine.plan``."""
    before = plan(in_force.policy, in_force.inventory, reports, overrides, previous, now, digest=in_force.digest,
                  damping_cleared=damping_cleared, vantage=vantage)
    after = plan(candidate.policy, candidate.inventory, reports, overrides, previous, now, digest=candidate.digest,
                 damping_cleared=damping_cleared, vantage=vantage)
    return before, after


def diff_report(
    in_force: Config, candidate: Config, before: DesiredState, after: DesiredState, changes: list[RoutingChange]
) -> dict[str, Any]:
    """The JSON document of ``gtm plan --candidate -o json``."""
    return {
        "differs": bool(changes),
        "in_force": {"digest": in_force.digest, "commit": in_force.commit, "files": list(in_force.files)},
        "candidate": {"digest": candidate.digest, "commit": candidate.commit, "files": list(candidate.files)},
        "held": before.held or after.held,
        "hold_reason": before.hold_reason or after.hold_reason,
        "changes": [c.to_dict() for c in changes],
    }


async def candidate_states(
    store: Store | None, in_force: Config, candidate: Config, now: float
) -> tuple[DesiredState, DesiredState]:
    """Plan both policies from what ``store`` holds (reports, overrides, desired state in
    force), or, with ``store`` None, from ``nominal_reports`` with no overrides and no previous
    state (no Redis needed). Reads only; writes nothing.

    Raises:
        StoreError: Redis unreachable.
    """
    if store is None:
        return plan_pair(in_force, candidate, nominal_reports([in_force, candidate], now), {}, None, now)
    names = sorted(
        (in_force.policy.region_names & in_force.inventory.regions.keys())
        | (candidate.policy.region_names & candidate.inventory.regions.keys())
    )
    inputs = await read_plan_inputs(store, names, inventory=in_force.inventory, thresholds=in_force.policy.health)
    return plan_pair(in_force, candidate, inputs.reports, inputs.overrides, inputs.previous, now,
                     damping_cleared=inputs.damping_cleared, vantage=inputs.vantage)


def render_lines(doc: dict[str, Any]) -> list[str]:
    """``diff_report`` output as plain lines for people (a pull-request comment, a terminal)."""
    def name(side: dict[str, Any]) -> str:
        return f"commit {side['commit'][:12]}" if side["commit"] else side["digest"][:19]

    lines = [f"routing diff: {name(doc['in_force'])} (in force) → {name(doc['candidate'])} (candidate)"]
    changes = [RoutingChange(**c) for c in doc["changes"]]
    if not changes:
        lines.append("no routing difference")
        return lines
    for c in changes:
        sign = {"service-added": "+", "segment-added": "+", "pool-added": "+",
                "service-removed": "-", "segment-removed": "-", "pool-removed": "-"}.get(c.kind, "~")
        lines.append(f"{sign} {c.describe()}")
    lines.append(f"{len(changes)} routing change(s)")
    return lines
