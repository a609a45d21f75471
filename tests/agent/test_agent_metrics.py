"""The agent's own /metrics (``gtm agent --metrics-listen``) over real HTTP, for an agent that
checked a real simulated fleet."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gtm.agent import RegionAgent
from gtm.agent.metrics import metrics_app
from gtm.store.store import Store
from tests.agent.test_agent import FAST, FleetFactory, region, src


async def test_agent_metrics_after_checks(redis_store: Store, fleet: FleetFactory) -> None:
    sim = await fleet(load=0.5)
    agent = RegionAgent(region(src(sim)), redis_store, FAST, agent_id="m1")
    client = TestClient(TestServer(metrics_app(agent)))
    await client.start_server()
    try:
        fams = {f.name: f for f in text_string_to_metric_families(await (await client.get("/metrics")).text())}
        assert fams["gtm_agent_checks"].samples[0].value == 0
        assert "gtm_agent_healthy" not in fams  # no check yet
        report = await agent.check_once()
        await agent.check_once()
        agent.writes, agent.writes_changed = 5, 2  # as the writer task counts them
        fams = {f.name: f for f in text_string_to_metric_families(await (await client.get("/metrics")).text())}
        assert (await (await client.get("/healthz")).json())["checks"] == 2
    finally:
        await client.close()
        await agent.aclose()
    name = report.region
    assert fams["gtm_agent_checks"].samples[0].value == 2 and fams["gtm_agent_checks"].type == "counter"
    assert fams["gtm_agent_checks"].samples[0].labels == {"region": name}
    writes = {s.labels["kind"]: s.value for s in fams["gtm_agent_report_writes"].samples}
    assert writes == {"changed": 2.0, "heartbeat": 3.0}
    assert fams["gtm_agent_healthy"].samples[0].value == 1.0
    assert fams["gtm_agent_spare_capacity"].samples[0].value == 1.5
    up = fams["gtm_agent_source_up"].samples[0]
    assert up.value == 1.0 and up.labels["source"] == report.sources[0].name and up.labels["kind"] == "vllm"
    assert 0 < fams["gtm_agent_source_scrape_seconds"].samples[0].value < 1
