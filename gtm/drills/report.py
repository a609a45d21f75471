"""A finished drill's report files: JSON (every event, failure and the per-second series), the
PNG timeline and the self-contained HTML page (``gtm.drills.plot``, ``gtm.drills.page``).

Blocking (matplotlib draws for about a second, files are written): call it from a thread
(``asyncio.to_thread``) when an event loop must keep running.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gtm.drills.page import render_html
from gtm.drills.plot import render_timeline_png
from gtm.models.drill import DrillReport

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ReportFiles:
    """The three files of one report (absolute paths, all in the same directory)."""

    json: Path
    png: Path
    html: Path


def write_report(report: DrillReport, out_dir: Path, *, stem: str | None = None) -> ReportFiles:
    """Write ``<stem>.json``, ``<stem>.png`` and ``<stem>.html`` into ``out_dir``.

    Each file is written to a temporary name and renamed, so a reader never sees half a file
    and an earlier report of the same stem is replaced whole.

    Args:
        report: the drill's report.
        out_dir: the directory (created with its parents when missing).
        stem: the file names' stem; default the report's id. Characters other than letters,
            digits, ``.``, ``_`` and ``-`` become ``_``.

    Returns:
        The three paths.

    Raises:
        StartupError: matplotlib (the ``drill`` extra) is not installed; nothing was written.
        OSError: the directory or a file could not be written.
    """
    name = _UNSAFE.sub("_", stem if stem is not None else report.id).strip("._") or "drill"
    png = render_timeline_png(report)  # first: a missing matplotlib must leave no partial set behind
    out = out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(json=out / f"{name}.json", png=out / f"{name}.png", html=out / f"{name}.html")
    _write(files.json, report.model_dump_json(indent=2).encode() + b"\n")
    _write(files.png, png)
    _write(files.html, render_html(report, png).encode())
    return files


def _write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["ReportFiles", "write_report"]
