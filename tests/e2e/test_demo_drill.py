"""The demo ends with a drain drill under client load (``gtm.demo.demo_drill``): it passes with
no request lost, EU clients stay in the EU, and its report files are written."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from gtm.demo import run_demo
from gtm.models.drill import DrillReport

pytestmark = pytest.mark.e2e


async def test_demo_ends_with_a_passing_drain_drill(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok = await run_demo(Console(file=io.StringIO()), queries=40, fast=True, json_out=True, drill_dir=tmp_path)
    out = json.loads(capsys.readouterr().out)
    assert ok and out["ok"], out["problems"]

    drill = out["drill"]
    assert drill["verdict"] == "passed", drill["verdict_line"]
    assert drill["failed_requests"] == 0 and drill["total_requests"] >= 100, drill
    # The demo has no caching resolver: clients leave with the answers (planned steps of 64 per 1 s).
    assert drill["answers_moved_s"] is not None and drill["answers_moved_s"] < 6.0, drill
    assert drill["clients_moved_s"] is not None and drill["clients_moved_s"] < 6.0, drill
    assert drill["restored_s"] is not None, drill

    files = [Path(f) for f in drill["files"]]
    assert [f.suffix for f in files] == [".json", ".png", ".html"] and all(f.parent == tmp_path for f in files)
    report = DrillReport.model_validate_json(files[0].read_text())
    assert report.verdict_line() == drill["verdict_line"]
    assert report.residency_violations == 0
    assert all(set(s.shares.get("eu", {})) <= {"eu-west-1", "eu-central-1"} for s in report.series)
    assert [e.kind for e in report.events if e.kind in ("act", "restore")] == ["act", "restore"]
    assert report.verdict_line() in files[2].read_text().replace("&#x27;", "'")
