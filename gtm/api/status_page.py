"""The controller's read-only status page (``GET /`` and ``GET /status``): plain server-rendered
HTML that reloads itself every ``REFRESH_S`` seconds. No JavaScript, no external assets, no
authentication (it changes nothing; drains stay behind the API's bearer token).

What it shows, all read at request time: the leader and its fencing token; the plan in force
(generation, age, whether static stability holds the routing and why); per region the health
state and reason, spare capacity, load, report age, override (kind, actor, reason, expiry) and
weights; the pools per segment with each member's weight and share; the anycast announcements
per prefix and region; the overrides; the rollouts and their state; the drill running now and
the latest drill verdicts; the providers; the newest audit entries.

The data comes from ``gtm.controller.status.gather_status`` (what ``gtm status`` shows), the
store (overrides, rollouts, drill lock, audit) and the running controller when there is one
(load, this replica's role). Every text taken from there is escaped (``html.escape``).
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from gtm.api.drills import drill_entries, verdict_of
from gtm.config.loader import Config
from gtm.controller.status import gather_status, partial_line
from gtm.models.audit import AuditEntry
from gtm.models.drill import DrillLock
from gtm.models.override import Override
from gtm.models.plan import DesiredState
from gtm.store import Store
from gtm.store.rollouts import load as load_rollouts

__all__ = ["AUDIT_ROWS", "REFRESH_S", "render_status_page", "status_page"]

REFRESH_S = 5
"""The page reloads itself this often, seconds (``<meta http-equiv="refresh">``)."""
AUDIT_ROWS = 20
"""Newest audit entries shown."""

_STATE_CLASS = {"healthy": "ok", "degraded": "warn", "unhealthy": "bad", "unknown": "unk", "reporting": "unk"}
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.2em;color:#1d2330;background:#fafbfc}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:1px solid #d0d5dd}
table{border-collapse:collapse;font-size:.88em;background:#fff} td,th{border:1px solid #d0d5dd;padding:.25em .5em;
text-align:left;vertical-align:top} th{background:#eef1f5} .ok{background:#d9f2dd} .warn{background:#fff1c2}
.bad{background:#f8d0d0} .unk{background:#e4e4e4} .banner{padding:.5em .8em;margin:.5em 0;border-radius:4px}
.muted{color:#667085} .num{text-align:right;font-variant-numeric:tabular-nums} dl{display:grid;
grid-template-columns:max-content auto;gap:.15em 1em;margin:0} dt{font-weight:600}
"""


async def status_page(store: Store, config: Config | None, controller: Any = None,
                      now: float | None = None) -> str:
    """Gather what the page shows and render it.

    Args:
        store: the installation's store.
        config: the policy and inventory in force (None: show what Redis holds).
        controller: the running ``Controller`` of this process, or None (then load and this
            replica's role are not shown).
        now: unix seconds (default: the wall clock).

    Returns:
        The whole HTML document.

    Raises:
        StoreError: Redis cannot be read.
    """
    now = time.time() if now is None else now
    status = await gather_status(store, config, now=now)
    overrides = await store.get_overrides()
    names = [r.name for r in config.policy.rollouts] if config is not None else []
    rollouts = {n: st for n, (st, _raw) in (await load_rollouts(store, names)).items()} if names else {}
    drill = await store.get_drill()
    audit = await store.read_audit(200)
    desired: DesiredState | None = getattr(controller, "state", None) if controller is not None else None
    if desired is None:
        desired = await store.get_desired()
    for name, info in (getattr(controller, "published", None) or {}).items():  # local publishers' lag
        if name in status["providers"] and "lag_s" not in status["providers"][name]:
            status["providers"][name] = {**status["providers"][name], "lag_s": info.get("lag_s")}
    return render_status_page(status, overrides=overrides, rollouts=rollouts, drill=drill, audit=audit,
                              desired=desired, controller=controller, now=now,
                              not_started=[n for n in names if n not in rollouts])


def render_status_page(
    status: dict[str, Any],
    *,
    overrides: dict[str, Override],
    rollouts: dict[str, Any],
    drill: DrillLock | None,
    audit: list[tuple[str, dict[str, str]]],
    desired: DesiredState | None,
    controller: Any = None,
    now: float,
    not_started: Sequence[str] = (),
) -> str:
    """Render the page from gathered data (pure: no I/O).

    Args:
        status: ``gather_status``'s document.
        overrides: stored overrides by region (expired ones are marked, not hidden).
        rollouts: ``RolloutState`` by name.
        drill: the running drill's lock, or None.
        audit: ``Store.read_audit`` rows, newest first (the first ``AUDIT_ROWS`` are listed;
            drill verdicts are searched in all).
        desired: the plan in force (for per-region load), or None.
        controller: this process's controller (role), or None.
        now: unix seconds.
        not_started: the policy's rollouts never started (listed as such).
    """
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_S}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>gtm status: {_e(status.get('namespace', ''))}</title><style>{_CSS}</style></head><body>",
        f"<h1>gtm status <span class='muted'>namespace {_e(status.get('namespace', ''))}</span></h1>",
        f"<p class='muted'>as of {_e(_utc(now))} · reloads every {REFRESH_S} s · read-only</p>",
        _summary(status, controller, now),
        _drill_section(drill, audit, now),
        "<h2>Regions</h2>", _regions(status, desired, now),
        "<h2>Pools per segment</h2>", _pools(status),
        "<h2>Anycast announcements</h2>", _announcements(status),
        "<h2>Overrides</h2>", _overrides(overrides, now),
        "<h2>Rollouts</h2>", _rollouts(rollouts, not_started),
        "<h2>Providers</h2>", _providers(status, now),
        f"<h2>Audit (newest {AUDIT_ROWS})</h2>", _audit(audit[:AUDIT_ROWS]),
        "</body></html>",
    ]
    return "\n".join(parts)


def error_page(message: str, now: float) -> str:
    """The page shown when Redis cannot be read (it keeps reloading)."""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="{REFRESH_S}"><title>gtm status: store unreachable</title>'
            f"<style>{_CSS}</style></head><body><h1>gtm status</h1>"
            f"<div class='banner bad' id='store-error'>Redis cannot be read: {_e(message)}. The controller keeps "
            f"serving the last good routing (static stability). As of {_e(_utc(now))}.</div></body></html>")


# -- sections ------------------------------------------------------------------------------


def _summary(status: dict[str, Any], controller: Any, now: float) -> str:
    leader = status.get("leader")
    owner, token = [*leader.rsplit("|", 1), ""][:2] if leader else ("none", "")
    d = status.get("desired")
    items: list[tuple[str, str]] = [("leader", owner if leader else "none (no controller holds the lease)"),
                                    ("fencing token", token or "—")]
    if controller is not None:
        items.append(("this replica", "leader" if getattr(controller, "is_leader", False) else "follower"))
    if d is not None:
        items += [("plan generation", str(d["generation"])),
                  ("plan age", f"{_age(now - d['generated_at'])} (made {_utc(d['generated_at'])})"),
                  ("routing", "HELD: " + d["hold_reason"] if d["held"] else "planning (inputs fresh)")]
    else:
        items.append(("plan", "none stored yet"))
    items += [("policy", f"{(status.get('policy_digest') or '?')[:19]} {status.get('policy_commit') or ''}".strip()),
              ("rejected reports", str(status.get("rejected_reports", 0)))]
    rejected_policy = (status.get("controller") or {}).get("policy_rejected")
    out = ["<dl id='summary'>", *(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items), "</dl>"]
    if d is not None and d["held"]:
        out.append(f"<div class='banner bad' id='held'>Routing held: {_e(d['hold_reason'])}</div>")
    if not leader:
        out.append("<div class='banner bad' id='no-leader'>No controller holds the leader lease: nothing is "
                   "planned or published until one does.</div>")
    if rejected_policy:
        out.append(f"<div class='banner warn'>{_e(rejected_policy)}</div>")
    return "\n".join(out)


def _regions(status: dict[str, Any], desired: DesiredState | None, now: float) -> str:
    rows = []
    for r in status.get("regions", []):
        st = desired.regions.get(r["region"]) if desired is not None else None
        override = "—"
        if r.get("override"):
            exp = r.get("override_expires_at")
            override = f"{r['override']} ({r.get('override_reason', '')})" + (
                f", lifts in {_age(exp - now)}" if exp else "")
        weights = ", ".join(f"{pid} {w}" for pid, w in sorted((r.get("weights") or {}).items())) or "—"
        anycast = ", ".join(f"{p} {a}" for p, a in sorted((r.get("anycast") or {}).items())) or "—"
        age = r.get("report_age_s")
        rows.append([
            _Cell(r["region"], id=f"region-{r['region']}"), r.get("jurisdiction", "?"),
            _Cell(r["state"], cls=_STATE_CLASS.get(r["state"], "unk")), r.get("reason") or "—",
            _Cell(f"{r.get('spare_capacity', 0):g} {r.get('capacity_unit', '')}", cls="num"),
            _Cell(f"{st.load:.0%}" if st is not None else "—", cls="num"),
            _Cell("expired" if r.get("report_expired") else (_age(age) if age is not None else "—"), cls="num"),
            override, weights, anycast, "; ".join(r.get("rollout") or []) or "—",
        ])
    return _table(["region", "jurisdiction", "health", "reason", "spare capacity", "load", "report age",
                   "override", "weights (pool weight)", "anycast", "rollout cap"], rows, id="regions")


def _pools(status: dict[str, Any]) -> str:
    rows = []
    for p in status.get("pools", []):
        total = sum(m["weight"] for m in p["members"])
        members = ", ".join(
            f"{m['region']} {m['weight']} ({m['weight'] / total:.0%})" if total else f"{m['region']} 0"
            for m in p["members"]) or "— (no member: NODATA)"
        rows.append([p["pool_id"], p["segment"], _Cell(p["mode"], cls="ok" if p["mode"] == "normal" else "warn"),
                     members, ", ".join(p.get("services") or []) or "—", p.get("reason") or "—"])
    return _table(["pool", "segment", "mode", "members: weight (share)", "services", "reason"], rows, id="pools")


def _announcements(status: dict[str, Any]) -> str:
    rows = []
    for a in status.get("announcements", []):
        action = a["action"] + (f" +{a['prepend']}" if a["action"] == "announce" and a["prepend"] else "")
        if a["action"] == "withdraw" and a.get("planned"):
            action += " (planned)"
        agent = a.get("agent")
        sent = "—" if agent is None else (
            f"{(agent.get('route') or {}).get('sent_action', '?')} → {(agent.get('route') or {}).get('acked', '?')}, "
            f"sessions {agent.get('sessions_up', 0)}/{agent.get('sessions', 0)}")
        rows.append([a["prefix"], a["region"], _Cell(action, cls="ok" if a["action"] == "announce" else "warn"),
                     _Cell(f"{a.get('share', 0):.0%}", cls="num"), str(a.get("med", 0)), a.get("reason") or "—", sent])
    return _table(["prefix", "region", "plan", "share", "MED", "reason", "agent (sent → acked)"], rows,
                  id="announcements", empty="no anycast prefixes in the policy")


def _overrides(overrides: dict[str, Override], now: float) -> str:
    rows = []
    for region, ov in sorted(overrides.items()):
        exp = "never" if ov.expires_at is None else (
            f"in {_age(ov.expires_at - now)}" if ov.active(now) else "expired (being lifted)")
        rows.append([region, _Cell(ov.kind, cls="warn"), ov.actor, ov.reason, _utc(ov.since), exp,
                     ov.drill or "—", "yes" if ov.force else "no"])
    return _table(["region", "kind", "actor", "reason", "since", "expires", "drill", "forced"], rows,
                  id="overrides", empty="none: every region is in normal service")


def _rollouts(rollouts: dict[str, Any], not_started: Sequence[str]) -> str:
    rows: list[list[object]] = [[name, "—", "—", _Cell("not started", cls="unk"), "—", "—", "—",
                                 f"in the policy: gtm rollout start {name}"] for name in sorted(not_started)]
    for name, st in sorted(rollouts.items()):
        phases = ", ".join(f"{r} {p.phase}" for r, p in sorted(st.regions.items())) or "—"
        cls = {"running": "ok", "done": "ok", "paused": "warn", "halted": "bad", "aborted": "bad"}.get(st.status, "unk")
        rows.append([name, st.spec.service, st.spec.target_version, _Cell(st.status, cls=cls),
                     str(st.wave + 1) if st.wave >= 0 else "—", str(st.step), phases, st.reason or "—"])
    return _table(["rollout", "service", "target version", "status", "wave", "step", "regions", "reason"], rows,
                  id="rollouts", empty="no rollout in the policy")


def _drill_section(drill: DrillLock | None, audit: list[tuple[str, dict[str, str]]], now: float) -> str:
    out = ["<h2>Drills</h2>"]
    if drill is not None:
        out.append(
            f"<div class='banner warn' id='drill-running'>Drill running: {_e(drill.kind)} {_e(drill.region)} "
            f"({_e(drill.id)}) by {_e(drill.actor)}, phase {_e(drill.phase)}, started {_e(_age(now - drill.started))} "
            f"ago; its lock lapses in {_e(_age(drill.expires_at - now))} unless renewed.</div>")
    else:
        out.append("<p id='drill-running'>No drill running.</p>")
    rows = []
    for entry in drill_entries(audit)[:10]:
        v = verdict_of(entry)
        cls = {"passed": "ok", "failed": "bad", "aborted": "bad", "refused": "warn"}.get(v.verdict, "") if v else ""
        rows.append([_utc(entry.ts), entry.action, entry.region or "—", entry.actor or "—",
                     _Cell(v.verdict if v else "—", cls=cls), entry.note or entry.reason or "—"])
    out.append(_table(["when", "action", "region", "actor", "verdict", "line"], rows, id="drills",
                      empty="no drill in the audit stream"))
    return "\n".join(out)


def _providers(status: dict[str, Any], now: float) -> str:
    rows = []
    for name, info in sorted((status.get("providers") or {}).items()):
        applied = info.get("applied_at")
        err = partial_line(info["partial"]) if info.get("partial") else info.get("last_error") or ""
        rows.append([name, str(info.get("generation", "—")), _age(now - applied) + " ago" if applied else "—",
                     f"{info['lag_s']:.3f} s" if isinstance(info.get("lag_s"), int | float) else "—",
                     _Cell(err or "ok", cls="bad" if err else "ok")])
    return _table(["provider", "generation", "applied", "plan → applied", "last error"], rows, id="providers",
                  empty="no provider has applied a plan yet")


def _audit(rows_in: Sequence[tuple[str, dict[str, str]]]) -> str:
    rows = []
    for _id, fields in rows_in:
        try:
            e = AuditEntry.from_fields(fields)
        except ValueError:
            continue
        what = e.action or (f"plan generation {e.generation}" if e.generation is not None else "—")
        detail = e.reason or e.note or "; ".join(f"{d.subject}: {d.action}" for d in e.decisions[:4]) + (
            f" (+{len(e.decisions) - 4} more)" if len(e.decisions) > 4 else "")
        rows.append([_utc(e.ts), what, e.region or "—", e.actor or "—", e.via or "—", detail or "—",
                     str(e.fencing_token) if e.fencing_token is not None else "—"])
    return _table(["when", "what", "region", "actor", "via", "reason / decisions", "fencing token"], rows,
                  id="audit", empty="no audit entries")


# -- helpers -------------------------------------------------------------------------------


class _Cell:
    """A table cell: its text (escaped when rendered) and optional id and class (fixed names
    chosen here; ids are escaped too)."""

    def __init__(self, text: str, *, cls: str = "", id: str = "") -> None:
        self.text, self.cls, self.id = text, cls, id

    def html(self) -> str:
        attrs = (f" class='{_e(self.cls)}'" if self.cls else "") + (f" id='{_e(self.id)}'" if self.id else "")
        return f"<td{attrs}>{_e(self.text)}</td>"


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, id: str,
           empty: str = "none") -> str:
    body = ["<tr>" + "".join(c.html() if isinstance(c, _Cell) else f"<td>{_e(c)}</td>" for c in row) + "</tr>"
            for row in rows]
    if not body:
        return f"<p class='muted' id='{_e(id)}'>{_e(empty)}</p>"
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>"
    return f"<table id='{_e(id)}'><thead>{head}</thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>"


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _utc(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
