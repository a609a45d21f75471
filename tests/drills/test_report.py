"""The drill report's files: JSON that round-trips, a real PNG timeline, and an HTML page that
headless Chromium renders with the verdict, the plot and every table row."""

from __future__ import annotations

import re
import struct
import sys
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from gtm.drills.page import MAX_FAILURE_ROWS, render_html
from gtm.drills.plot import HEIGHT_PX, WIDTH_PX, render_timeline_png
from gtm.drills.report import write_report
from gtm.errors import StartupError
from gtm.models.drill import DrillReport, RequestRecord
from tests.support.browser import browser, wait_for  # noqa: F401  (browser: a fixture)
from tests.support.drill_report import make_drill_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MARKUP = '<img src=x onerror="document.title=1"> & <b>bold</b>'


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_files_json_round_trips_and_png_is_a_timeline(tmp_path: Path) -> None:
    report = make_drill_report()
    files = write_report(report, tmp_path / "reports")

    assert [files.json.name, files.png.name, files.html.name] == [f"{report.id}.{x}" for x in ("json", "png", "html")]
    assert sorted(p.name for p in files.json.parent.iterdir()) == sorted(
        [files.json.name, files.png.name, files.html.name]), "no temporary file is left behind"
    again = DrillReport.model_validate_json(files.json.read_text())
    assert again == report
    assert len(again.series) == 60 and len(again.events) == 6 and len(again.failures) == 3

    png = files.png.read_bytes()
    assert png_size(png) == (WIDTH_PX, HEIGHT_PX)
    assert 30_000 < len(png) < 1_000_000, len(png)


def test_stem_is_made_safe_for_a_file_name(tmp_path: Path) -> None:
    files = write_report(make_drill_report(seconds=5, failures=0), tmp_path, stem="../drain eu/west")
    assert files.json == (tmp_path / "drain_eu_west.json").resolve()
    assert files.html.parent == tmp_path.resolve()


def test_refused_report_draws_empty_panels() -> None:
    report = DrillReport(id="drill-drain-eu-west-1-1", kind="drain", region="eu-west-1", started=1.0, ended=1.0,
                         verdict="refused", reasons=["another drill is running"])
    assert png_size(render_timeline_png(report))[0] == WIDTH_PX
    page = render_html(report, b"")
    assert "refused: another drill is running" in page


def test_more_populations_make_a_taller_plot() -> None:
    report = make_drill_report(seconds=10, failures=0)
    series = [s.model_copy(update={"shares": {**s.shares, "apac": {"us-west-2": 1.0}, "sa": {"us-east-1": 1.0}}})
              for s in report.series]
    w, h = png_size(render_timeline_png(report.model_copy(update={"series": series})))
    assert w == WIDTH_PX and h > HEIGHT_PX


def test_missing_matplotlib_names_the_extra_and_writes_nothing(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # what `import` sees when it is not installed
    with pytest.raises(StartupError, match=r"gtm\[drill\]"):
        write_report(make_drill_report(seconds=3), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_html_lists_at_most_the_first_hundred_failures() -> None:
    report = make_drill_report(seconds=10, failures=0)
    failures = [RequestRecord(t=report.started + i / 100, population="eu", outcome="refused", detail=f"n{i}")
                for i in range(150)]
    page = render_html(report.model_copy(update={"failures": failures, "failed_requests": 150}), PNG_MAGIC)
    table = re.search(r'<table id="failures".*?</table>', page, re.S)
    assert table is not None
    assert table.group(0).count("<tr>") == 1 + MAX_FAILURE_ROWS  # the header row, then the first hundred
    assert "n99<" in table.group(0) and "n100<" not in table.group(0)
    assert f"the first {MAX_FAILURE_ROWS} of 150" in page


def test_html_page_renders_in_headless_chromium(tmp_path: Path, browser) -> None:  # noqa: F811
    report = make_drill_report(note=MARKUP)
    files = write_report(report, tmp_path)
    html = files.html.read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html, "self-contained, no script"

    browser.get(files.html.as_uri())
    verdict = wait_for(browser, lambda d: d.find_element(By.ID, "verdict"))
    assert verdict.text == report.verdict_line()
    assert verdict.text.startswith("drain eu-west-1: traffic left in 6.2 s (answers) / 31.0 s (clients, TTL 30); "
                                   "3 of 2,400 requests failed")
    assert "failed" in (verdict.get_attribute("class") or "").split()

    img = browser.find_element(By.ID, "timeline")
    wait_for(browser, lambda d: d.execute_script("return arguments[0].complete", img))
    assert browser.execute_script("return arguments[0].naturalWidth", img) == WIDTH_PX
    assert browser.execute_script("return arguments[0].naturalHeight", img) == HEIGHT_PX
    assert img.size["width"] > 0 and img.size["height"] > 0, "the plot is laid out, not hidden"

    def rows(table_id: str) -> list[str]:
        return [r.text for r in browser.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")]

    events = rows("events")
    assert len(events) == len(report.events) == 7
    assert any("answers_moved" in r and "answers no longer name eu-west-1" in r for r in events)
    assert len(rows("failures")) == 3
    assert all("timeout" in r and "read timeout after 2.0 s" in r for r in rows("failures"))
    series = rows("series")
    assert len(series) == 60
    assert series[0].split()[:3] == ["0", "40", "0"]
    figures = rows("figures")
    assert "failed requests 3 of 2,400" in figures
    assert "TTL 30 s" in figures and "answers moved 6.2 s after the act" in figures, figures

    # Operator text is shown as text, never run or parsed as markup.
    assert any(MARKUP in r for r in events)
    assert len(browser.find_elements(By.TAG_NAME, "img")) == 1
    assert len(browser.find_elements(By.TAG_NAME, "b")) == 0
    assert browser.title.startswith("gtm drill drain eu-west-1")
