"""The drill report's timeline plot: one PNG, stacked panels sharing the x axis (seconds since
the drill started).

Panels, top to bottom: the authoritative answers' share per region, then per client
population the share of its requests answered with each region (stacked areas, one fixed
colour per region: ``gtm.drills.palette``); requests per second, ok and failed (stacked
bars); latency p50 and p99 (ms); each region's health state in the plan in force (a band per
region, hatched while an override holds it). Every event is a vertical line across all panels,
labelled in the top one. The verdict line is the title.

matplotlib (the ``drill`` extra) is imported only when a plot is drawn, through its Agg canvas:
no screen, no pyplot global state, safe in a thread.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from gtm.drills.palette import (
    FAILED_COLOUR,
    OK_COLOUR,
    STATE_COLOURS,
    region_colours,
    report_populations,
    report_regions,
    state_colour,
)
from gtm.errors import StartupError
from gtm.models.drill import DrillReport, SecondSample

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WIDTH_PX = 1400
"""The PNG's width in pixels; the height is ``HEIGHT_PX`` plus ``EXTRA_POPULATION_PX`` per client
population beyond two."""
HEIGHT_PX = 1000
EXTRA_POPULATION_PX = 120
DPI = 100
MAX_POPULATION_PANELS = 6
"""Populations beyond this many are left out of the plot (the HTML tables keep them all)."""

EVENT_STYLE: dict[str, tuple[str, str]] = {
    "preflight": ("#7f7f7f", ":"),
    "act": ("#d62728", "-"),
    "answers_moved": ("#1f77b4", "--"),
    "clients_moved": ("#9467bd", "--"),
    "restore": ("#2ca02c", "-"),
    "restored": ("#2ca02c", "--"),
    "abort": ("#d62728", "-."),
    "limit": ("#d62728", ":"),
    "note": ("#7f7f7f", ":"),
}
"""Event kind → (line colour, line style); other kinds are drawn like ``note``."""


def _figure_class() -> type[Figure]:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise StartupError(
            "the drill report's timeline plot needs matplotlib, which is not installed: "
            "install gtm with its drill extra (pip install 'gtm[drill]')"
        ) from exc
    return Figure


def render_timeline_png(report: DrillReport) -> bytes:
    """Draw the report's timeline.

    Args:
        report: a finished drill's report (a refused one, with no samples, draws empty panels).

    Returns:
        The PNG file's bytes, ``WIDTH_PX`` wide (1400 px) and about 1000 px high.

    Raises:
        StartupError: matplotlib is not installed (the message names the ``drill`` extra).
    """
    figure_cls = _figure_class()
    populations = report_populations(report)[:MAX_POPULATION_PANELS]
    regions = report_regions(report)
    colours = region_colours(regions)
    health_regions = sorted({r for s in report.series for r in s.health})
    height = HEIGHT_PX + EXTRA_POPULATION_PX * max(0, len(populations) - 2)

    fig = figure_cls(figsize=(WIDTH_PX / DPI, height / DPI), dpi=DPI, layout="constrained")
    ratios = [1.2] * (1 + len(populations)) + [1.0, 1.0, 0.35 + 0.25 * max(1, len(health_regions))]
    axes: list[Axes] = list(fig.subplots(len(ratios), 1, sharex=True, height_ratios=ratios))
    span = _span(report)
    first = min([0.0, *(e.t - report.started for e in report.events)])  # a preflight may precede the start

    share_axes = axes[: 1 + len(populations)]
    _shares(share_axes[0], report.series, lambda s: s.answer_shares, regions, colours, span,
            "authoritative answers")
    for ax, pop in zip(share_axes[1:], populations, strict=True):
        _shares(ax, report.series, _population(pop), regions, colours, span, f"clients {pop}: answered")
    rps_ax, lat_ax, health_ax = axes[-3:]
    _requests(rps_ax, report.series)
    _latency(lat_ax, report.series)
    _health(health_ax, report.series, health_regions)
    for ax in axes:
        ax.set_xlim(first, span)
        ax.grid(axis="x", alpha=0.3)
    _events(axes, report, share_axes[0])
    health_ax.set_xlabel("seconds since the drill started")

    fig.legend([_patch(colours[r]) for r in regions], regions, loc="outside right upper", title="region",
               fontsize=9)
    fig.legend([_patch(c) for c in STATE_COLOURS.values()], list(STATE_COLOURS), loc="outside right lower",
               title="health", fontsize=8)
    fig.suptitle(textwrap.fill(report.verdict_line(), width=150), fontsize=11,
                 color=FAILED_COLOUR if report.exit_code else "black")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _span(report: DrillReport) -> float:
    last = max((s.t + 1 for s in report.series), default=0)
    events = max((e.t - report.started for e in report.events), default=0.0)
    return max(float(last), report.ended - report.started, events, 1.0)


def _population(pop: str) -> Callable[[SecondSample], dict[str, float]]:
    def pick(s: SecondSample) -> dict[str, float]:
        return s.shares.get(pop, {})

    return pick


def _patch(colour: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(facecolor=colour, edgecolor="none")


def _shares(ax: Axes, series: Sequence[SecondSample], pick: Callable[[SecondSample], dict[str, float]],
            regions: list[str],
            colours: dict[str, str], span: float, title: str) -> None:
    ax.set_title(title, loc="left", fontsize=9)
    ax.set_ylim(0, 1)
    ax.set_yticks([0, 0.5, 1], ["0", "50 %", "100 %"])
    if not series:
        ax.text(span / 2, 0.5, "no samples", ha="center", va="center", color="#7f7f7f")
        return
    xs = [s.t for s in series] + [series[-1].t + 1]
    shown = [r for r in regions if any(pick(s).get(r, 0.0) > 0 for s in series)]
    ys = [[pick(s).get(r, 0.0) for s in series] for r in shown]
    ys = [row + row[-1:] for row in ys]
    if shown:
        ax.stackplot(xs, ys, colors=[colours[r] for r in shown], step="post", linewidth=0)


def _requests(ax: Axes, series: Sequence[SecondSample]) -> None:
    ax.set_title("requests per second", loc="left", fontsize=9)
    xs = [s.t for s in series]
    ok = [s.ok for s in series]
    failed = [s.failed for s in series]
    ax.bar(xs, ok, width=1.0, align="edge", color=OK_COLOUR, label="ok")
    ax.bar(xs, failed, width=1.0, align="edge", bottom=ok, color=FAILED_COLOUR, label="failed")
    totals = [o + f for o, f in zip(ok, failed, strict=True)]
    ax.set_ylim(0, max(totals, default=0) * 1.25 + 1)
    # One failed request among hundreds is a sliver of a bar: mark every second that had one.
    marks = [(x + 0.5, tot) for x, f, tot in zip(xs, failed, totals, strict=True) if f]
    if marks:
        ax.scatter([m[0] for m in marks], [m[1] for m in marks], marker="v", s=28, color=FAILED_COLOUR,
                   zorder=3)
    ax.legend(loc="upper right", fontsize=8, ncols=2)


def _latency(ax: Axes, series: Sequence[SecondSample]) -> None:
    ax.set_title("latency (ms)", loc="left", fontsize=9)
    xs = [s.t + 0.5 for s in series]
    nan = float("nan")
    p50 = [nan if s.p50_ms is None else s.p50_ms for s in series]
    p99 = [nan if s.p99_ms is None else s.p99_ms for s in series]
    ax.plot(xs, p50, color="#1f77b4", label="p50", linewidth=1.2)
    ax.plot(xs, p99, color="#ff7f0e", label="p99", linewidth=1.2)
    top = max([v for v in p99 + p50 if v == v], default=1.0)
    ax.set_ylim(0, top * 1.15 + 1)
    ax.legend(loc="upper right", fontsize=8, ncols=2)


def _health(ax: Axes, series: Sequence[SecondSample], regions: list[str]) -> None:
    ax.set_title("health in the plan in force (hatched: an override holds it)", loc="left", fontsize=9)
    ax.set_yticks(range(len(regions)), regions, fontsize=8)
    ax.set_ylim(-0.6, max(len(regions), 1) - 0.4)
    ax.invert_yaxis()
    for row, region in enumerate(regions):
        for start, length, state in _runs(series, region):
            ax.broken_barh([(start, length)], (row - 0.35, 0.7), facecolors=state_colour(state),
                           hatch="//" if "(" in state else None, edgecolor="white", linewidth=0)


def _runs(series: Sequence[SecondSample], region: str) -> list[tuple[int, int, str]]:
    """``(start, length, state)`` runs of one region's state over consecutive samples."""
    runs: list[tuple[int, int, str]] = []
    for s in series:
        state = s.health.get(region)
        if state is None:
            continue
        if runs and runs[-1][2] == state and runs[-1][0] + runs[-1][1] == s.t:
            start, length, _ = runs[-1]
            runs[-1] = (start, length + 1, state)
        else:
            runs.append((s.t, 1, state))
    return runs


def _events(axes: list[Axes], report: DrillReport, label_ax: Axes) -> None:
    for ev in report.events:
        x = ev.t - report.started
        colour, style = EVENT_STYLE.get(ev.kind, EVENT_STYLE["note"])
        for ax in axes:
            ax.axvline(x, color=colour, linestyle=style, linewidth=1.1, alpha=0.9)
        # The kind only: the texts are in the HTML page's events table.
        label = label_ax.text(x, 0.97, ev.kind, rotation=90, va="top", ha="right", fontsize=7, color=colour,
                              transform=label_ax.get_xaxis_transform(), clip_on=True,
                              bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})
        label.set_in_layout(False)


__all__ = ["DPI", "EVENT_STYLE", "HEIGHT_PX", "WIDTH_PX", "render_timeline_png"]
