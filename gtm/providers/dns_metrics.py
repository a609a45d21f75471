"""Prometheus counters of the embedded DNS server, for the controller's ``/metrics``.

- ``gtm_dns_client_location_total{by}``: queries for location-dependent services, by how the
  client was located: ``ecs``, ``source`` (no ECS, or ECS /0) or ``unlocated``;
- ``gtm_dns_answers_total{service,segment,region}``: service answers (region ``none``: NODATA);
- ``gtm_dns_responses_total{rcode}``: responses sent;
- ``gtm_geoip_reloads_total``: new versions of the GeoIP table file swapped in;
- ``gtm_geoip_reload_errors_total``: new versions that did not load (the previous table stayed);
- ``gtm_geoip_build_timestamp_seconds{database_type}``: when the table in use was built, unix
  seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from gtm.providers.embedded_dns import EmbeddedDnsServer

__all__ = ["LOCATED_BY", "EmbeddedDnsCollector"]

LOCATED_BY = ("ecs", "source", "unlocated")
"""Values of the ``by`` label, always all exported (0 until counted)."""


class EmbeddedDnsCollector:
    """Reads one server's counters at scrape time (register it in a ``CollectorRegistry``)."""

    def __init__(self, server: EmbeddedDnsServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        """The series listed in the module docstring, read from the server's counters now."""
        located = CounterMetricFamily(
            "gtm_dns_client_location", "Queries for location-dependent services by how the client was located",
            labels=["by"],
        )
        counts = self.server.location_counts
        for by in LOCATED_BY:
            located.add_metric([by], counts.get(by, 0))
        yield located
        answers = CounterMetricFamily(
            "gtm_dns_answers", "Service answers given", labels=["service", "segment", "region"]
        )
        for (service, segment, region), n in sorted(self.server.answer_counts.items()):
            answers.add_metric([service, segment, region], n)
        yield answers
        rcodes = CounterMetricFamily("gtm_dns_responses", "DNS responses sent", labels=["rcode"])
        for rcode, n in sorted(self.server.rcode_counts.items()):
            rcodes.add_metric([rcode], n)
        yield rcodes
        geoip = self.server.geoip
        if geoip is not None:
            yield CounterMetricFamily("gtm_geoip_reloads", "GeoIP table versions swapped in", value=geoip.reloads)
            yield CounterMetricFamily(
                "gtm_geoip_reload_errors", "GeoIP table versions that did not load", value=geoip.reload_errors
            )
            built = GaugeMetricFamily(
                "gtm_geoip_build_timestamp_seconds", "When the GeoIP table in use was built", labels=["database_type"]
            )
            built.add_metric([geoip.database_type], geoip.build_epoch)
            yield built
