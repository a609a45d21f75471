"""The live view of a running drill: what the operator watches in the terminal, redrawn once a
second by the drill runner through ``rich.live.Live``.

``DrillProgress`` is a snapshot the runner fills in from its own measurements; ``render_live``
turns it into a rich renderable. Both are pure: no clock reads, no I/O; the same snapshot
always renders the same way.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from gtm.drills.palette import FAILED_COLOUR, OK_COLOUR, region_colours, state_colour
from gtm.models.drill import DrillEvent, DrillKind, DrillLimits

EVENTS_SHOWN = 5
"""How many of the newest events the view lists."""

NEAR = 0.8
"""A limit used to this fraction (0..1) or more is shown as close (yellow); past 1, crossed (red)."""


@dataclass
class DrillProgress:
    """One second of a running drill, as the live view shows it. The runner may keep one and
    update its fields in place.

    Attributes:
        id / kind / region: the drill.
        phase: ``preflight``, ``baseline``, ``act``, ``hold``, ``restore``, ``settle``, ``done``
            (free text, shown as is).
        elapsed_s: seconds since the drill (its load) started.
        hold_s: the planned hold, seconds.
        ok / failed: client requests so far, by outcome.
        last_rps: requests sent in the last second (all populations).
        p99_ms: p99 latency over the limits' window (``limits.error_window_s``), milliseconds
            (None: no request completed in it).
        shares: per population, the share (0..1) of its last seconds' requests answered with
            each region.
        health: each region's health state in the plan in force (``healthy (drain)`` when an
            override holds it).
        events: the events so far (or the newest ones), in time order.
        limits: the policy's ``drills:`` limits in force.
        error_rate: failed fraction (0..1) of the requests in the limits' window.
        window_requests: requests in that window; below ``limits.min_requests`` the error rate
            is shown as not judged yet (None: not counted, always judged).
        error_judged_after_s: for ``kill``: the error rate is not judged before this many
            seconds since the start (detection + TTL + margin); None: judged throughout.
        started: the drill's start, unix seconds: event times are shown relative to it (None:
            as UTC clock times).
        hold_elapsed_s: seconds held so far (None before the hold).
        answer_shares: the authoritative answers of the last seconds, share per region (0..1).
    """

    id: str
    kind: DrillKind
    region: str
    phase: str = "preflight"
    elapsed_s: float = 0.0
    hold_s: float = 0.0
    ok: int = 0
    failed: int = 0
    last_rps: float = 0.0
    p99_ms: float | None = None
    shares: dict[str, dict[str, float]] = field(default_factory=dict)
    health: dict[str, str] = field(default_factory=dict)
    events: Sequence[DrillEvent] = field(default_factory=list)
    limits: DrillLimits = field(default_factory=DrillLimits)
    error_rate: float = 0.0
    window_requests: int | None = None
    error_judged_after_s: float | None = None
    started: float | None = None
    hold_elapsed_s: float | None = None
    answer_shares: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LimitUse:
    """How close a running drill is to one of its limits.

    Attributes:
        name: what is limited (``error rate``, ``p99 latency``, ``duration``, ``failed requests``).
        now / limit: the values as shown (with units).
        used: the fraction (0..) of the limit used; above 1 when crossed.
        crossed: the limit is crossed (an abort, or for ``failed requests`` a failed verdict).
    """

    name: str
    now: str
    limit: str
    used: float
    crossed: bool


def limit_uses(p: DrillProgress) -> list[LimitUse]:
    """The limits of ``p.limits`` with the drill's current values, in the view's order:
    error rate, p99 latency, duration, and (not for ``kill``) failed requests."""
    lim = p.limits
    uses: list[LimitUse] = []
    rate_limit = f"{lim.max_error_rate:.1%} over {lim.error_window_s:g} s"
    if p.error_judged_after_s is not None and p.elapsed_s < p.error_judged_after_s:
        uses.append(LimitUse("error rate", f"not judged before {p.error_judged_after_s:.0f} s", rate_limit, 0.0,
                             False))
    elif p.window_requests is not None and p.window_requests < lim.min_requests:
        uses.append(LimitUse("error rate", f"{p.window_requests} of {lim.min_requests} requests", rate_limit, 0.0,
                             False))
    else:
        uses.append(LimitUse("error rate", f"{p.error_rate:.1%}", rate_limit, _used(p.error_rate, lim.max_error_rate),
                             p.error_rate > lim.max_error_rate))
    p99_limit = f"{lim.max_p99_latency_ms:,.0f} ms"
    if p.p99_ms is None:
        uses.append(LimitUse("p99 latency", "—", p99_limit, 0.0, False))
    else:
        uses.append(LimitUse("p99 latency", f"{p.p99_ms:,.0f} ms", p99_limit, _used(p.p99_ms, lim.max_p99_latency_ms),
                             p.p99_ms > lim.max_p99_latency_ms))
    uses.append(LimitUse("duration", f"{p.elapsed_s:.0f} s", f"{lim.max_duration_s:g} s",
                         _used(p.elapsed_s, lim.max_duration_s), p.elapsed_s > lim.max_duration_s))
    if p.kind != "kill":
        allowed = lim.allowed_failed_requests
        uses.append(LimitUse("failed requests", f"{p.failed:,}", f"{allowed:,} allowed",
                             _used(p.failed, allowed), p.failed > allowed))
    return uses


def _used(now: float, limit: float) -> float:
    if limit > 0:
        return now / limit
    return 0.0 if now <= 0 else float("inf")


def render_live(p: DrillProgress) -> RenderableType:
    """The live view of ``p``: a panel with the drill's phase and clock, the request counts,
    the shares per client population, the health per region, the limits (with how much of each
    is used) and the newest events.

    Returns:
        A rich renderable, for ``rich.live.Live.update`` or ``Console.print``.
    """
    regions = set(p.answer_shares) | set(p.health) | {p.region}
    for shares in p.shares.values():
        regions |= set(shares)
    colours = region_colours(regions)
    parts: list[RenderableType] = [_status(p), _shares(p, colours)]
    if p.health:
        parts.append(_health(p.health, colours))
    uses = limit_uses(p)
    parts.append(_limits(uses))
    if p.events:
        parts.append(_events(p.events[-EVENTS_SHOWN:], p.started))
    hold = (f"held {p.hold_elapsed_s:.0f} of {p.hold_s:g} s" if p.hold_elapsed_s is not None
            else f"hold {p.hold_s:g} s planned")
    title = Text.assemble(("gtm drill ", "bold"), (f"{p.kind} ", "bold"), (p.region, f"bold {colours[p.region]}"))
    return Panel(Group(*parts), title=title, subtitle=hold,
                 border_style="red" if any(u.crossed for u in uses) else "blue")


def _status(p: DrillProgress) -> Text:
    total = p.ok + p.failed
    t = Text()
    t.append("phase ", style="dim")
    t.append(p.phase, style="bold")
    t.append(f"   elapsed {p.elapsed_s:.1f} s")
    t.append("   requests ", style="dim")
    t.append(f"{p.ok:,} ok", style=OK_COLOUR)
    t.append(" / ")
    t.append(f"{p.failed:,} failed", style=f"bold {FAILED_COLOUR}" if p.failed else "")
    t.append(f" of {total:,}")
    t.append(f"   {p.last_rps:,.0f} rps")
    t.append(f"   p99 {'—' if p.p99_ms is None else f'{p.p99_ms:,.0f} ms'}")
    return t


def _shares(p: DrillProgress, colours: dict[str, str]) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
    table.add_column("who", style="dim", no_wrap=True)
    table.add_column("shares")
    rows = [("answers", p.answer_shares)] + [(f"clients {pop}", s) for pop, s in sorted(p.shares.items())]
    for who, shares in rows:
        line = Text()
        for region, share in sorted(shares.items()):
            if share <= 0:
                continue
            line.append(f"{region} ", style=colours.get(region, ""))
            line.append(f"{share:.0%}  ", style="bold" if region == p.region else "")
        table.add_row(who, line if line else Text("—", style="dim"))
    return table


def _health(health: dict[str, str], colours: dict[str, str]) -> Text:
    t = Text("health  ", style="dim")
    for region, state in sorted(health.items()):
        t.append(f"{region} ", style=colours.get(region, ""))
        t.append(f"{state}   ", style=state_colour(state))
    return t


def _limits(uses: list[LimitUse]) -> Table:
    table = Table(title="limits", title_justify="left", box=None, pad_edge=False, padding=(0, 1))
    table.add_column("limit", no_wrap=True)
    table.add_column("now", justify="right", no_wrap=True)
    table.add_column("limit at", justify="right", no_wrap=True)
    table.add_column("used", no_wrap=True)
    table.add_column("", justify="right", no_wrap=True)
    for u in uses:
        style = FAILED_COLOUR if u.crossed else ("yellow" if u.used >= NEAR else OK_COLOUR)
        bar = ProgressBar(total=1.0, completed=min(u.used, 1.0), width=20, complete_style=style,
                          finished_style=style)
        pct = "crossed" if u.crossed else f"{min(u.used, 9.99):.0%}"
        table.add_row(u.name, u.now, u.limit, bar, Text(pct, style=style))
    return table


def _events(events: Sequence[DrillEvent], started: float | None) -> Table:
    table = Table(title="events", title_justify="left", box=None, show_header=False, pad_edge=False, padding=(0, 1))
    table.add_column("t", justify="right", style="dim", no_wrap=True)
    table.add_column("kind", style="bold", no_wrap=True)
    table.add_column("text")
    for ev in events:
        when = (f"+{ev.t - started:.1f} s" if started is not None
                else _dt.datetime.fromtimestamp(ev.t, _dt.UTC).strftime("%H:%M:%S"))
        table.add_row(when, ev.kind, Text(ev.text))
    return table


__all__ = ["EVENTS_SHOWN", "NEAR", "DrillProgress", "LimitUse", "limit_uses", "render_live"]
