"""The canary signals end to end: a simulated fleet's error rate, TTFT, ITL and served version,
scraped over real HTTP by the region agent into ModelStats."""

from __future__ import annotations

import asyncio

import pytest

from gtm.agent.daemon import AgentSettings, RegionAgent
from gtm.agent.scrape import parse_exposition
from gtm.models.region import FleetSource
from gtm.sim import start_fleet
from gtm.store import connect
from tests.factories import make_region


@pytest.mark.parametrize("kind", ["vllm", "sglang", "tgi"])
async def test_agent_reports_latency_errors_and_served_version(kind: str) -> None:
    runner, sim = await start_fleet(kind, "127.0.0.1", 0, "m", "v1", 2, tokens_per_s=100_000, seed=3)
    store = connect("embedded://", ns="signals")
    src = FleetSource(name="a", kind=kind, url=sim.url, replicas=2, version="v0", model="m")
    agent = RegionAgent(make_region("r1", "EU").model_copy(update={"fleet": (src,)}), store, AgentSettings())
    try:
        sim.set_state(error_rate=0.1, ttft_s=0.5, itl_s=0.03, jitter=0.0)
        first = (await agent.check_once()).models["m"]
        assert first.ttft_s is None and first.error_rate is None, "no interval before the first scrape"
        # Rates are counter deltas over the agent's own clock: a long interval keeps an
        # event-loop or GC pause inside one scrape from skewing them.
        await asyncio.sleep(1.0)
        m = (await agent.check_once()).models["m"]
        assert m.ttft_s == pytest.approx(0.5, rel=0.02)  # TGI: queue + prefill halves
        assert m.itl_s == pytest.approx(0.03, rel=0.02)
        assert m.error_rate == pytest.approx(0.1, rel=0.02)
        assert m.requests_per_s is not None and 150 < m.requests_per_s < 500  # 100k × 0.3 / 100 tokens
        # The engine's own version wins over the inventory's.
        assert m.version == "v1" and m.replicas_by_version == {"v1": 2} and m.healthy_on("v1") == 2
        sim.set_state(version="v2")
        await asyncio.sleep(0.05)
        m = (await agent.check_once()).models["m"]
        assert m.version == "v2" and m.healthy_on("v2") == 2 and m.healthy_on("v1") == 0
    finally:
        await agent.aclose()
        await runner.cleanup()
        await store.aclose()


async def test_simulated_histograms_stay_coherent() -> None:
    runner, sim = await start_fleet("vllm", "127.0.0.1", 0, "m", "v1", 1, tokens_per_s=50_000)
    try:
        sim.set_state(ttft_s=0.3)
        await asyncio.sleep(0.05)
        sim.set_state(ttft_s=3.0)
        await asyncio.sleep(0.05)
        exp = parse_exposition(sim.render())
        name = "vllm:time_to_first_token_seconds"
        buckets = sorted((float(lb["le"]), v) for lb, v in exp.series(name + "_bucket"))
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), "buckets are cumulative"
        assert buckets[-1][0] == float("inf") and buckets[-1][1] == pytest.approx(exp.total(name + "_count"))
        le_1 = next(v for le, v in buckets if le >= 1.0)
        assert 0 < le_1 < counts[-1], "slow requests land above 1 s, earlier ones below"
        ok = exp.total("vllm:request_success_total", lambda lb: lb.get("finished_reason") != "abort")
        assert ok is not None and ok > 0
    finally:
        await runner.cleanup()


def test_sim_rejects_bad_quality_settings() -> None:
    from gtm.sim import FleetSim

    sim = FleetSim(kind="vllm", model="m")
    with pytest.raises(ValueError, match="error_rate"):
        sim.set_state(error_rate=1.5)
    with pytest.raises(ValueError, match="ttft_s"):
        sim.set_state(ttft_s=-1)
