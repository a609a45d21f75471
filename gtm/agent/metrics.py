"""The region agent's own Prometheus metrics (``gtm agent --metrics-listen HOST:PORT``, ``GET
/metrics``), read from the running :class:`~gtm.agent.daemon.RegionAgent` at scrape time.

Every series carries ``region``:

- ``gtm_agent_checks_total``: checks done (one scrape of every source);
- ``gtm_agent_stalls_total``: checks scraped again because the agent itself had stalled;
- ``gtm_agent_report_writes_total{kind}``: reports written to Redis, ``kind`` ``changed`` (at
  once, with a wake-up event) or ``heartbeat``;
- ``gtm_agent_report_write_failures_total``: failed write attempts (Redis unreachable, slow);
- ``gtm_agent_healthy``: 1 when the newest check's verdict is healthy;
- ``gtm_agent_spare_capacity{unit}``: the newest check's spare capacity;
- ``gtm_agent_last_check_timestamp_seconds``: when the newest check finished, unix seconds;
- ``gtm_agent_source_up{source,kind}`` / ``gtm_agent_source_healthy{source,kind}``: per fleet
  source, whether its metrics endpoint answered / whether it is fit to serve;
- ``gtm_agent_source_scrape_seconds{source,kind}``: the newest scrape's wall time, seconds.

No authentication: the page holds no secret (source URLs are not exported).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from gtm.agent.daemon import RegionAgent

__all__ = ["AgentCollector", "metrics_app"]


class AgentCollector:
    """Reads one agent's counters and newest report at scrape time (register it in a
    ``CollectorRegistry``)."""

    def __init__(self, agent: RegionAgent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        """The series listed in the module docstring."""
        a = self.agent
        r = a.region.name
        for name, doc, value in (
            ("gtm_agent_checks", "Checks done (every source scraped once)", a.checks),
            ("gtm_agent_stalls", "Checks scraped again because the agent itself stalled", a.stalls),
            ("gtm_agent_report_write_failures", "Failed report write attempts", a.write_failures),
        ):
            yield _one(name, doc, r, value)
        writes = CounterMetricFamily("gtm_agent_report_writes", "Reports written to Redis", labels=["region", "kind"])
        writes.add_metric([r, "changed"], a.writes_changed)
        writes.add_metric([r, "heartbeat"], a.writes - a.writes_changed)
        yield writes
        rep = a.last_report
        if rep is None:
            return
        yield _gauge("gtm_agent_healthy", "1 when the newest check's verdict is healthy", r, float(rep.healthy))
        spare = GaugeMetricFamily("gtm_agent_spare_capacity", "Spare capacity of the newest check",
                                  labels=["region", "unit"])
        spare.add_metric([r, rep.capacity_unit], rep.spare_capacity)
        yield spare
        yield _gauge("gtm_agent_last_check_timestamp_seconds", "When the newest check finished, unix seconds", r,
                     rep.observed_at)
        labels = ["region", "source", "kind"]
        up = GaugeMetricFamily("gtm_agent_source_up", "1 when the source's metrics endpoint answered", labels=labels)
        healthy = GaugeMetricFamily("gtm_agent_source_healthy", "1 when the source is fit to serve", labels=labels)
        took = GaugeMetricFamily("gtm_agent_source_scrape_seconds", "Newest scrape's wall time, seconds",
                                 labels=labels)
        for s in rep.sources:
            up.add_metric([r, s.name, s.kind], float(s.up))
            healthy.add_metric([r, s.name, s.kind], float(s.healthy))
            took.add_metric([r, s.name, s.kind], s.latency_ms / 1000.0)
        yield from (up, healthy, took)


def _one(name: str, doc: str, region: str, value: float) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=["region"])
    fam.add_metric([region], value)
    return fam


def _gauge(name: str, doc: str, region: str, value: float) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, doc, labels=["region"])
    fam.add_metric([region], value)
    return fam


def metrics_app(agent: RegionAgent) -> web.Application:
    """An aiohttp app serving ``GET /metrics`` (Prometheus text) and ``GET /healthz`` for
    ``agent``."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "region": agent.region.name, "checks": agent.checks})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app
