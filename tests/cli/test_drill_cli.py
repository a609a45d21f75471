"""``gtm drill drain|failover|kill`` as a script sees it, without a running installation: usage
errors exit 2, a refused preflight exits 3 with its reasons, the self-contained drills keep
their names. Runs against the real Redis at GTM_TEST_REDIS_URL in a private namespace (empty:
no plan yet, so every region is refused as not serving)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from gtm.cli.main import app
from tests.support.redis import REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def gtm(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, ["drill", *args, "--redis", REDIS_URL, "--ns", "drill-cli-empty",
                              "--policies", str(ROOT / "policies"), "--regions", str(ROOT / "regions")],
                        catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


def test_usage_errors_exit_2() -> None:
    code, _, err = gtm("failover", "eu-west-1", "--connect", "192.0.2.30")
    assert code == 2 and "--connect wants ADDRESS=URL" in err
    code, _, err = gtm("drain", "eu-west-1", "--population", "eu")
    assert code == 2 and "--population wants NAME=SUBNET" in err
    code, _, err = gtm("kill", "eu-west-1", "--endpoint-scheme", "ftp")
    assert code == 2 and "--endpoint-scheme must be http or https" in err


def test_refused_preflight_exits_3_with_reasons() -> None:
    code, out, _ = gtm("failover", "eu-west-1", "-o", "json")
    assert code == 3
    doc = json.loads(out)
    assert doc["dry_run"] is True and doc["kind"] == "failover"
    assert doc["refusals"] == ["eu-west-1 is not serving now (not planned yet): a drill of a region that takes no "
                               "traffic proves nothing"]
    code, out, _ = gtm("drain", "mars-1", "--yes", "-o", "json")
    assert code == 3
    assert json.loads(out)["reasons"][0].startswith("unknown region 'mars-1'")


def test_help_teaches_each_kind() -> None:
    res = runner.invoke(app, ["drill", "--help"])
    assert res.exit_code == 0
    for kind in ("drain", "failover", "kill", "providers", "anycast"):
        assert kind in res.stdout
    res = runner.invoke(app, ["drill", "kill", "--help"])
    text = " ".join(res.stdout.replace("│", " ").split())
    assert "Only for fleets gtm runs itself" in text
    assert "Exit: 0 passed, 1 failed or aborted, 2 usage, 3 refused" in text
