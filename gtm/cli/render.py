"""Human-readable rendering of status and plans with rich (JSON output bypasses this)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gtm.controller.status import announcement_rows, partial_line, pools_with_services
from gtm.models.plan import DesiredState

_STATE_STYLE = {"healthy": "green", "degraded": "yellow", "unhealthy": "red", "unknown": "magenta"}


def _age(now: float, t: float | None) -> str:
    return "-" if t is None else f"{max(0.0, now - t):.1f}s"


def render_status(console: Console, status: dict[str, Any]) -> None:
    """Print the regions table and the pools table from ``gtm status`` data."""
    now = status["now"]
    leader = status.get("leader") or "none"
    state = status.get("desired")
    head = f"leader: {leader}   generation: {state['generation'] if state else '-'}"
    if state and state.get("policy_digest"):
        head += f"   policy: {escape(str(state['policy_digest'])[:19])}"
    if state and state.get("held"):
        head += f"   [bold red]HELD: {escape(state['hold_reason'])}[/]"
    console.print(head)
    ctl = status.get("controller") or {}
    if ctl.get("policy_rejected"):
        console.print(f"[bold red]POLICY REJECTED[/]: {escape(ctl['policy_rejected'])}", highlight=False)
    if ctl.get("policy_digest") and status.get("policy_digest") and ctl["policy_digest"] != status["policy_digest"]:
        console.print(
            f"[yellow]note[/]: the controller runs policy {ctl['policy_digest'][:19]}"
            + (f" (commit {ctl['policy_commit'][:12]})" if ctl.get("policy_commit") else "")
            + f"; your local files are {status['policy_digest'][:19]}", highlight=False,
        )
    loaded, planned = status.get("policy_commit") or "", (state or {}).get("policy_commit") or ""
    if loaded or planned:
        extra = f" (routing in force planned at {planned})" if loaded and planned and planned != loaded else ""
        console.print(f"policy commit: {loaded or planned}{extra}", highlight=False, markup=False)
    t = Table(title="regions", show_lines=False)
    for col in ("region", "jurisdiction", "health", "spare", "report age", "override", "reason"):
        t.add_column(col)
    for r in status["regions"]:
        style = _STATE_STYLE.get(r["state"], "")
        t.add_row(
            escape(r["region"]),
            escape(r["jurisdiction"]),
            (f"[{style}]{r['state']}[/]" if style else r["state"])
            + (f" [bold red]DAMPED {r['damped_until'] - now:.0f}s[/]" if r.get("damped_until") else ""),
            f"{r['spare_capacity']:.2f} {r['capacity_unit']}",
            _age(now, r["observed_at"]) + (" (rejected)" if r.get("report_rejected") else
                                            " (expired)" if r.get("report_expired") and r["observed_at"] else ""),
            escape("; ".join(
                ([f"{r['override']} ({r['override_reason']})"
                  + (f", {r['override_expires_at'] - now:.0f}s left" if r.get("override_expires_at") else "")]
                 if r["override"] else [])
                + list(r.get("rollout") or [])
            )),
            escape(r["reason"]),
        )
    console.print(t)
    if not state:
        hint = ""
        if leader == "none" and not any(r.get("observed_at") for r in status["regions"]):
            hint = (f" Namespace {escape(str(status.get('namespace', '?')))!r} holds no reports either: "
                    "check --ns / GTM_NAMESPACE and --redis.")
        console.print(f"[yellow]no desired state yet: is a controller running?{hint}[/]")
        return
    p = Table(title="pools")
    for col in ("pool", "segment", "mode", "weights", "services"):
        p.add_column(col)
    for pool in status["pools"]:
        weights = "  ".join(f"{m['region']}={m['weight']}" for m in pool["members"])
        mode = pool["mode"]
        p.add_row(
            escape(pool["pool_id"]), escape(pool["segment"]),
            mode if mode == "normal" else f"[bold red]{mode}[/]",
            escape(weights), escape(", ".join(pool["services"])),
        )
    console.print(p)
    if status.get("announcements"):
        console.print(_anycast_table(status["announcements"], now, agent=True))
    current = state.get("generation") if state else None
    for name, info in status.get("providers", {}).items():
        gen = info.get("generation")
        line = f"provider {escape(name)}: "
        if gen is None:
            line += "nothing applied yet"
        else:
            line += f"generation {gen} applied {_age(now, info.get('applied_at'))} ago"
            if info.get("lag_s") is not None:
                line += f", {info['lag_s']}s after it was planned"
            if current is not None and gen != current:
                line += f" [yellow](generation in force: {current})[/]"
        partial = info.get("partial")
        if partial:
            line += "\n  " + escape(partial_line(partial))
        elif info.get("last_error"):
            err = escape(str(info["last_error"]))
            line += f"\n  [red]last error[/] {_age(now, info.get('last_error_at'))} ago: {err}"
        console.print(line, highlight=False)
    if status.get("rejected_reports"):
        console.print(f"[yellow]rejected reports: {status['rejected_reports']}[/]")


def _wants(row: dict[str, Any]) -> str:
    if row["action"] == "announce":
        return f"[green]announce[/] +{row['prepend']} MED {row['med']}"
    return "[red]withdraw[/]" + (" (planned)" if row.get("planned") else "")


def _agent(row: dict[str, Any], now: float) -> str:
    """What the region's agent sent and ExaBGP acknowledged (from ``gtm:{ns}:bgp:<region>``)."""
    agent = row.get("agent")
    if agent is None:
        return "agent: —"
    route = agent.get("route") or {}
    sent = route.get("sent_action") or "nothing sent"
    ack = route.get("acked") or "-"
    when = f" {_age(now, route['acked_at'])} ago" if route.get("acked_at") else ""
    sessions = f"{agent.get('sessions_up', 0)}/{agent.get('sessions', 0)} sessions up"
    if agent.get("connected") is False:
        sessions += ", ExaBGP not connected"
    return f"sent {sent}, ack {ack}{when}; {sessions}"


def _anycast_table(rows: list[dict[str, Any]], now: float, *, agent: bool) -> Table:
    """Per prefix and region: what the plan wants, the share it follows, why (and the agent's side)."""
    t = Table(title="anycast")
    cols = ["prefix", "region", "plan wants", "share", "reason"] + (["agent / ExaBGP"] if agent else [])
    for col in cols:
        t.add_column(col, overflow="fold", no_wrap=col in ("prefix", "region", "plan wants", "share"))
    last = None
    for row in rows:
        cells = [
            escape(row["prefix"]) if row["prefix"] != last else "", escape(row["region"]), _wants(row),
            f"{row['share']:.0%}" if row["action"] == "announce" else "-", escape(row["reason"]),
        ]
        if agent:
            cells.append(escape(_agent(row, now)))
        t.add_row(*cells)
        last = row["prefix"]
    return t


def render_plan(console: Console, state: DesiredState, previous: DesiredState | None) -> None:
    """Print what the controller would do now, with the reason for each decision."""
    if state.held:
        console.print(f"[bold red]HOLD[/]: {escape(state.hold_reason)}")
    if previous is not None and previous.routing_digest() == state.routing_digest():
        console.print("[green]no change[/]: the routing in force is what the policy asks for")
    t = Table(title=f"decisions (generation {state.generation})")
    for col in ("subject", "action", "reason"):
        t.add_column(col)
    for d in state.decisions:
        t.add_row(escape(d.subject), escape(d.action), escape(d.reason))
    if state.decisions:
        console.print(t)
    p = Table(title="pools")
    for col in ("pool", "segment", "region", "weight", "reason"):
        p.add_column(col)
    for pool in pools_with_services(state):
        for i, m in enumerate(pool["members"]):
            p.add_row(
                escape(pool["pool_id"]) if i == 0 else "", escape(pool["segment"]) if i == 0 else "",
                escape(m["region"]), str(m["weight"]), escape(m["reason"]),
            )
    console.print(p)
    if state.announcements:
        console.print(_anycast_table(announcement_rows(state), state.generated_at, agent=False))
