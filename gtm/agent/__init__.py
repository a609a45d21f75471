"""The region agent: scrapes the region's serving fleet and GPUs, publishes FleetReports.

``scrape`` parses and normalises engine / DCGM expositions and health endpoints;
``daemon`` runs the check loop and writes reports to the store.
"""

from __future__ import annotations

from gtm.agent.daemon import AgentSettings, RegionAgent
from gtm.agent.scrape import EngineSample, GpuSample, ScrapeResult, parse_exposition

__all__ = [
    "AgentSettings",
    "EngineSample",
    "GpuSample",
    "RegionAgent",
    "ScrapeResult",
    "parse_exposition",
]
