"""Plausibility of a region agent's report, judged before the engine uses it.

A schema-valid report can still be a lie (a forged write by anyone with Redis access, or an
agent with a broken clock or an outdated inventory). :func:`check_report` holds each report to
what the inventory, the policy and the Redis server's own clock say; the caller (the one
reader of the engine's inputs, ``gtm.store.inputs``) counts a rejected report per region and
reason and treats it as no new report. Pure: the server time and the key's remaining expiry
are arguments.

Rules (each rejection carries a reason-code, used as the counter's label, and a human reason):

- ``no-expiry``: the report key has no expiry (``PTTL`` -1). Agents always write with one; a
  key without it would keep a silent region's last word forever.
- ``ttl``: the key's remaining expiry is above ``MAX_TTL_FACTOR`` × the policy's
  ``report_timeout_s`` (60 s by default): agents set about one report timeout.
- ``future``: ``observed_at`` is more than ``max_clock_skew_s`` ahead of the Redis server's
  ``TIME``. (A report from the past is not rejected: the engine judges its age.)
- ``replicas``: a model's ``replicas_total`` or ``replicas_healthy``, or their sum over the
  region's models, exceeds the replicas the inventory lists for the region's serving
  sources × (1 + ``capacity_margin``).
- ``capacity``: the region's or a model's spare capacity exceeds what those replicas can
  hold × (1 + ``capacity_margin``): one idle-replica equivalent per replica (unit
  ``replicas``), or ``capacity_per_replica`` tokens/s per replica (unit ``tokens/s``; with no
  ``capacity_per_replica`` in the inventory there is no figure and the bound is skipped).

A region whose inventory entry lists no serving source gives no replica figure: the replica
and capacity bounds are skipped for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gtm.models.policy import HealthThresholds
from gtm.models.region import Region
from gtm.models.report import FleetReport

MAX_TTL_FACTOR = 10.0
"""A report key may hold at most this many ``report_timeout_s`` of remaining expiry."""

NO_EXPIRY = -1
"""``PTTL`` of a key that exists but has no expiry."""

MALFORMED = "malformed"
"""Reason-code of a report that does not parse or names another region (the store's own check)."""

REASON_CODES = (MALFORMED, "no-expiry", "ttl", "future", "replicas", "capacity")
"""Every reason-code a rejected report can carry."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a report is not used.

    Attributes:
        code: short reason-code (one of ``REASON_CODES``): a counter label.
        reason: what was wrong, with the figures, for operators.
    """

    code: str
    reason: str


def inventory_replicas(region: Region) -> int:
    """Replicas the inventory lists behind ``region``'s serving sources (DCGM sources excluded)."""
    return sum(s.replicas for s in region.fleet if s.kind != "dcgm")


def check_report(
    report: FleetReport,
    region: Region | None,
    thresholds: HealthThresholds,
    *,
    server_time: float,
    ttl_ms: int | None,
) -> Rejection | None:
    """Whether ``report`` is plausible; the first rule it breaks, else None.

    Args:
        report: a schema-valid report read from ``region``'s key.
        region: the region's inventory entry, or None when the caller has no inventory (the
            replica and capacity bounds are then skipped).
        thresholds: the policy's ``report_timeout_s``, ``max_clock_skew_s`` (seconds) and
            ``capacity_margin`` (fraction, 0.25 = 25 %).
        server_time: the Redis server's clock (``TIME``), unix seconds.
        ttl_ms: the report key's remaining expiry (``PTTL``), milliseconds: -1 for none, -2
            when the key vanished since it was read (it expired: fine), None when unknown.

    Returns:
        The rejection, or None when the report may be used.
    """
    if ttl_ms == NO_EXPIRY:
        return Rejection("no-expiry", "report key has no expiry")
    max_ttl_s = MAX_TTL_FACTOR * thresholds.report_timeout_s
    if ttl_ms is not None and ttl_ms / 1000.0 > max_ttl_s:
        return Rejection("ttl", f"report key expires in {ttl_ms / 1000.0:.0f}s, far above the report timeout "
                                f"({MAX_TTL_FACTOR:g} × {thresholds.report_timeout_s:g}s = {max_ttl_s:g}s)")
    ahead = report.observed_at - server_time
    if ahead > thresholds.max_clock_skew_s:
        return Rejection("future", f"report timestamp is {ahead:.1f}s ahead of the Redis server's clock "
                                   f"(max_clock_skew_s {thresholds.max_clock_skew_s:g}s)")
    if region is None:
        return None
    return _check_capacity(report, region, thresholds.capacity_margin)


def _check_capacity(report: FleetReport, region: Region, margin: float) -> Rejection | None:
    replicas = inventory_replicas(region)
    if replicas <= 0:
        return None
    max_replicas = replicas * (1.0 + margin)
    listed = f"the inventory's {replicas} replicas × (1 + margin {margin:g})"
    total = sum(m.replicas_total for m in report.models.values())
    if total > max_replicas:
        return Rejection("replicas", f"{total} replicas reported, above {listed} = {max_replicas:g}")
    for m in report.models.values():
        if max(m.replicas_total, m.replicas_healthy) > max_replicas:
            return Rejection("replicas", f"model {m.model}: {max(m.replicas_total, m.replicas_healthy)} replicas "
                                         f"reported, above {listed} = {max_replicas:g}")
    if report.capacity_unit == "replicas":
        per_replica, unit = 1.0, "idle-replica equivalents"
    elif region.capacity_per_replica is not None:
        per_replica, unit = region.capacity_per_replica, "tokens/s"
    else:
        return None  # tokens/s with no per-replica figure in the inventory: nothing to bound by
    bound = replicas * per_replica * (1.0 + margin)
    how = f"{listed}" + ("" if per_replica == 1.0 and unit != "tokens/s" else f" × {per_replica:g} tokens/s")
    if report.spare_capacity > bound:
        return Rejection("capacity", f"spare capacity {report.spare_capacity:g} {unit} above what the inventory "
                                     f"allows: {how} = {bound:g}")
    for m in report.models.values():
        if m.spare_capacity > bound:
            return Rejection("capacity", f"model {m.model}: spare capacity {m.spare_capacity:g} {unit} above what "
                                         f"the inventory allows: {how} = {bound:g}")
    return None
