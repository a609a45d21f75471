"""The drill report as one self-contained HTML page: the verdict, the headline figures, the
plan, the timeline plot (the PNG inlined as a ``data:`` URI), the events, the failed requests
and the per-second series.

No external resource, no script: the file can be mailed, attached to a ticket or opened from
disk in any browser. Every text from the report is escaped (region names, reasons, event texts
and request details come from configuration, operators and remote servers).
"""

from __future__ import annotations

import base64
import datetime as _dt
from collections.abc import Iterable, Sequence
from html import escape

from gtm.drills.palette import region_colours, report_populations, report_regions
from gtm.models.drill import DrillReport, SecondSample

MAX_FAILURE_ROWS = 100
"""Failed requests listed in the page (the JSON file keeps every one the report holds)."""

_CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .3em; }
h2 { font-size: 1.1em; margin: 1.6em 0 .4em; border-bottom: 1px solid #ddd; }
.verdict { font-size: 1.05em; padding: .6em .8em; border-radius: 4px; font-weight: 600; }
.verdict.passed { background: #e6f4ea; color: #1e5c2c; border-left: 6px solid #2ca02c; }
.verdict.failed, .verdict.aborted { background: #fdecea; color: #8a1c17; border-left: 6px solid #d62728; }
.verdict.refused { background: #fff4e0; color: #7a4b00; border-left: 6px solid #ffbf00; }
table { border-collapse: collapse; margin: .3em 0; }
th, td { border: 1px solid #ddd; padding: .2em .5em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.figures th { width: 14em; }
.swatch { display: inline-block; width: .8em; height: .8em; margin-right: .3em; vertical-align: baseline; }
img.timeline { max-width: 100%; height: auto; border: 1px solid #ddd; }
.muted { color: #777; }
"""


def render_html(report: DrillReport, png: bytes) -> str:
    """The report page.

    Args:
        report: the drill's report.
        png: the timeline plot's PNG bytes (``gtm.drills.plot.render_timeline_png``), inlined.

    Returns:
        The page as one HTML5 document (UTF-8 text). The verdict line is in the element with
        ``id="verdict"`` (class ``verdict`` plus the verdict word); the plot is
        ``<img id="timeline">``; the tables have ids ``figures``, ``events``, ``failures``,
        ``series``, with one ``<tr>`` per row in their ``<tbody>``.
    """
    colours = region_colours(report_regions(report))
    title = f"gtm drill {report.kind} {report.region}: {report.verdict}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>", f"<style>{_CSS}</style></head><body>",
        f"<h1>gtm drill {escape(report.kind)} {escape(report.region)} "
        f'<span class="muted">{escape(report.id)}</span></h1>',
        f'<p id="verdict" class="verdict {escape(report.verdict)}">{escape(report.verdict_line())}</p>',
        "<h2>Figures</h2>", _table("figures", ("", ""), _figures(report), header=False),
    ]
    if report.reasons:
        parts += ["<h2>Why</h2>", _list("reasons", report.reasons)]
    parts += ["<h2>Plan</h2>", _list("plan", report.plan) if report.plan else '<p class="muted">none</p>']
    b64 = base64.b64encode(png).decode("ascii")
    parts += [
        "<h2>Timeline</h2>",
        f'<img id="timeline" class="timeline" alt="timeline of the drill" src="data:image/png;base64,{b64}">',
        "<h2>Events</h2>",
        _table("events", ("t (s)", "time (UTC)", "event", "text"),
               ([_num(e.t - report.started), _utc(e.t), escape(e.kind), escape(e.text)] for e in report.events)),
        f"<h2>Failed requests ({_count(len(report.failures), report.failed_requests)})</h2>",
        _table("failures", ("t (s)", "population", "address", "region", "outcome", "status", "latency (ms)",
                            "detail"),
               ([_num(f.t - report.started), escape(f.population), escape(f.address), _region(f.region, colours),
                 escape(f.outcome), _num(f.status), _num(f.latency_ms), escape(f.detail)]
                for f in report.failures[:MAX_FAILURE_ROWS])),
        "<h2>Per second</h2>",
        _series_table(report.series, report_populations(report), colours),
        '<p class="muted">Times are seconds since the drill started '
        f"({escape(_utc(report.started))} UTC); shares are of that second's answers or requests.</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _figures(report: DrillReport) -> list[list[str]]:
    rows = [
        ("verdict", report.verdict),
        ("answers moved", _secs(report.answers_moved_s, "after the act")),
        ("clients moved", _secs(report.clients_moved_s, "after the act")),
        ("restored", _secs(report.restored_s, "after the restore")),
        ("failed requests", f"{report.failed_requests:,} of {report.total_requests:,}"),
        ("error window", f"{report.error_window_s:.1f} s"
         + (f" (at most {report.expected_window_s:.1f} s allowed)" if report.expected_window_s is not None else "")),
        ("residency violations", f"{report.residency_violations:,}"),
        ("TTL", f"{report.ttl_s:g} s"),
        ("resolver", report.resolver or "—"),
        ("actor", report.actor or "—"),
        ("started", f"{_utc(report.started)} UTC"),
        ("duration", f"{report.ended - report.started:.1f} s"),
    ]
    return [[f"<th>{escape(k)}</th>", escape(v)] for k, v in rows]


def _series_table(series: Sequence[SecondSample], populations: list[str], colours: dict[str, str]) -> str:
    head = ("t (s)", "ok", "failed", "p50 (ms)", "p99 (ms)", "answers",
            *(f"clients {p}" for p in populations), "health")
    rows = ([_num(s.t), _num(s.ok), _num(s.failed), _num(s.p50_ms), _num(s.p99_ms),
             _shares(s.answer_shares, colours), *(_shares(s.shares.get(p, {}), colours) for p in populations),
             escape(" · ".join(f"{r} {h}" for r, h in sorted(s.health.items())))]
            for s in series)
    return _table("series", head, rows)


def _table(tid: str, head: Sequence[str], rows: Iterable[Sequence[str]], *, header: bool = True) -> str:
    """A table of already-escaped cells; a cell starting with ``<t`` is a whole cell."""
    body = []
    for row in rows:
        cells = "".join(c if c.startswith(("<td", "<th")) else f"<td>{c}</td>" for c in row)
        body.append(f"<tr>{cells}</tr>")
    thead = ("<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr></thead>") if header else ""
    if not body:
        body = [f'<tr><td class="muted" colspan="{len(head)}">none</td></tr>']
    return f'<table id="{tid}" class="{tid}">{thead}<tbody>' + "".join(body) + "</tbody></table>"


def _list(lid: str, items: Sequence[str]) -> str:
    return f'<ul id="{lid}">' + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def _num(v: float | int | None) -> str:
    if v is None:
        return '<td class="num muted">—</td>'
    text = f"{v:,}" if isinstance(v, int) else f"{v:,.1f}"
    return f'<td class="num">{text}</td>'


def _region(name: str | None, colours: dict[str, str]) -> str:
    if name is None:
        return '<span class="muted">—</span>'
    colour = colours.get(name, "#7f7f7f")
    return f'<span class="swatch" style="background:{colour}"></span>{escape(name)}'


def _shares(shares: dict[str, float], colours: dict[str, str]) -> str:
    return " ".join(f"{_region(r, colours)} {v:.0%}" for r, v in sorted(shares.items()) if v > 0)


def _secs(v: float | None, after: str) -> str:
    return "never" if v is None else f"{v:.1f} s {after}"


def _count(shown: int, total: int) -> str:
    if shown > MAX_FAILURE_ROWS:
        return f"the first {MAX_FAILURE_ROWS} of {total:,}"
    return f"{total:,}" if shown == total else f"{shown:,} recorded of {total:,}"


def _utc(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-5]


__all__ = ["MAX_FAILURE_ROWS", "render_html"]
