"""The provider drill (``gtm drill providers``): one failover published at once to the embedded
DNS, a real BIND 9 (RFC2136 + TSIG) and moto's Route 53 server, read back from each."""

from __future__ import annotations

import io
import json
import os
import time

import pytest
from rich.console import Console

from gtm.testing.bind import find_named
from gtm.testing.provider_drill import EU_REGIONS, FAILED, run_provider_drill

BOUND_S = 15.0


async def test_failover_reaches_every_provider(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_named() is not None, "named is missing: run scripts/ensure-bind.sh"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "the-callers-own")  # must be back afterwards
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    t0 = time.monotonic()
    ok = await run_provider_drill(Console(file=io.StringIO()), json_out=True)
    elapsed = time.monotonic() - t0
    report = json.loads(capsys.readouterr().out)

    assert ok and report["ok"], report["problems"]
    assert elapsed < 60, f"drill took {elapsed:.1f}s"
    providers = {p["provider"]: p for p in report["providers"]}
    assert set(providers) == {"embedded DNS", "BIND (rfc2136)", "Route 53 (moto)"}
    for name, p in providers.items():
        assert p["failover_s"] is not None and p["failover_s"] <= BOUND_S, (name, p["failover_s"])
        assert p["recovery_s"] is not None and p["recovery_s"] <= BOUND_S, (name, p["recovery_s"])
        assert any(FAILED in view for view in p["before"].values()), (name, p["before"])
        assert not any(FAILED in view for view in p["after"].values()), (name, p["after"])
        assert any(FAILED in view for view in p["back"].values()), (name, p["back"])
        assert set(p["eu_regions_seen"]) <= EU_REGIONS, (name, p["eu_regions_seen"])
    eu_after = {"embedded DNS": "EU", "BIND (rfc2136)": "eu", "Route 53 (moto)": "eu"}
    for name, view in eu_after.items():  # EU clients keep an EU answer through the failover
        assert set(providers[name]["after"][view]) == EU_REGIONS - {FAILED}, (name, providers[name]["after"])
    assert report["provider_workers"]["route53"]["errors"] == 0
    assert report["provider_workers"]["bind"]["errors"] == 0

    # fake credentials were only set for the drill; named and the moto server are gone
    assert os.environ["AWS_ACCESS_KEY_ID"] == "the-callers-own"
    assert "AWS_SECRET_ACCESS_KEY" not in os.environ
    for pid in report["servers"].values():
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
