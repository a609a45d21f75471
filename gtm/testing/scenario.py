"""The four-region scenario ``gtm demo`` and ``gtm drill providers`` run: simulated fleets,
their agents and the config a controller plans from, all in one process on 127.0.0.1.

Two US and two EU regions, each with one simulated fleet (``gtm.sim``) of a different engine
and a BGP side; an EU segment with EU residency and a default segment; clients placed by EDNS
Client Subnet in ``EU_CLIENT`` or ``US_CLIENT``. The service also takes anycast: the EU segment
has its own prefix (``EU_PREFIX``, announced only from EU regions), the service's prefix
(``ANYCAST_PREFIX``) serves the default segment.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from gtm.agent.daemon import AgentSettings, RegionAgent
from gtm.config.loader import Config, policy_digest
from gtm.models.policy import Policy
from gtm.models.region import Inventory, Region
from gtm.sim.fleet import start_fleet

__all__ = [
    "ADDRESS_TO_REGION", "ANYCAST_PREFIX", "EU_CLIENT", "EU_PREFIX", "FQDN", "MODEL", "REGIONS", "US_CLIENT",
    "VERSION",
    "scenario_config", "set_fleet_mode", "start_fleets_and_agents",
]

FQDN = "chat.gtm.example.com"
EU_CLIENT = "100.96.7.0/24"
US_CLIENT = "100.64.9.0/24"
MODEL = "llama-3.1-8b"
ANYCAST_PREFIX = "203.0.113.0/24"
"""The service's anycast prefix (serves the default segment)."""
EU_PREFIX = "198.51.100.0/24"
"""The EU segment's own anycast prefix: announced only from EU regions."""
PEER_ASN = 65000
"""The upstream router every region's speaker peers with (no BGP daemon runs in the demo)."""
VERSION = "llama-3.1-8b-2026-10"

# region, jurisdiction, continent, client network, endpoint, engine kind, replicas
REGIONS = [
    ("us-east-1", "US", "NA", "100.64.0.0/16", "192.0.2.10", "vllm", 4),
    ("us-west-2", "US", "NA", "100.65.0.0/16", "192.0.2.20", "tgi", 2),
    ("eu-west-1", "EU", "EU", "100.96.0.0/16", "192.0.2.30", "vllm", 3),
    ("eu-central-1", "EU", "EU", "100.97.0.0/16", "192.0.2.40", "sglang", 2),
]
ADDRESS_TO_REGION = {r[4]: r[0] for r in REGIONS}
"""Endpoint address → region (to name the region a DNS answer points at)."""


def scenario_config(ports: dict[str, int]) -> Config:
    """The scenario's inventory and policy (the same shape as ``regions/`` and ``policies/``);
    ``ports`` maps each region to its simulated fleet's port on 127.0.0.1."""
    regions = {}
    for i, (name, jur, cont, net, addr, kind, replicas) in enumerate(REGIONS):
        fleet: list[dict[str, Any]] = [
            {"name": f"{kind}-a", "kind": kind, "url": f"http://127.0.0.1:{ports[name]}",
             "model": MODEL, "version": VERSION, "replicas": replicas},
        ]
        if name == "us-east-1":
            fleet.append({"name": "gpu", "kind": "dcgm", "url": f"http://127.0.0.1:{ports[name]}/dcgm/metrics"})
        regions[name] = Region.model_validate(
            {"name": name, "jurisdiction": jur,
             "geography": {"continent": cont, "client_networks": [net]},
             "endpoints": [{"address": addr}], "fleet": fleet,
             "bgp": {"local_asn": 65001 + i, "local_address": f"127.0.0.{11 + i}", "next_hop": addr,
                     "peers": [{"address": "127.0.0.1", "asn": PEER_ASN}]}}
        )
    inventory = Inventory(regions=regions)
    policy = Policy.model_validate(
        {
            "name": "demo",
            "zones": [{"name": "gtm.example.com", "nameservers": ["ns1.gtm.example.com"],
                       "nameserver_addresses": {"ns1.gtm.example.com": "192.0.2.53"}}],
            "health": {"fall": 2, "rise": 3, "report_timeout_s": 6},
            "safety": {"planned_step": 64, "step_interval_s": 1.0, "weight_deadband": 8},
            "services": [
                {"name": "chat", "fqdn": FQDN, "zone": "gtm.example.com", "ttl": 30,
                 "model": MODEL, "routing": "capacity",
                 "regions": [r[0] for r in REGIONS],
                 "anycast": {"prefix": ANYCAST_PREFIX},
                 "segments": [
                     {"name": "eu", "match": {"continents": ["EU"]},
                      "residency": {"jurisdictions": ["EU"]}, "anycast": {"prefix": EU_PREFIX}},
                     {"name": "default"},
                 ]},
            ],
        }
    )
    return Config(policy=policy, inventory=inventory, digest=policy_digest(policy, inventory), files=())


async def start_fleets_and_agents(
    cfg: Config,
    ports: dict[str, int],
    store: Any,
    stop: asyncio.Event,
    runners: list[Any],
    tasks: list[asyncio.Task[Any]],
    *,
    agent_prefix: str,
) -> None:
    """Start the simulated fleet and the agent of every region, in this process.

    Appends the fleets' runners to ``runners`` and the agents' tasks to ``tasks`` (the caller
    stops them), so a failure half-way still leaves everything started to be cleaned up.
    """
    for name, *_rest, kind, replicas in REGIONS:
        runner, _sim = await start_fleet(
            kind, "127.0.0.1", ports[name], model=MODEL, version=VERSION, replicas=replicas
        )
        runners.append(runner)
    settings = AgentSettings()
    for name in ports:
        agent = RegionAgent(cfg.inventory.regions[name], store, settings, agent_id=f"{agent_prefix}-{name}")
        tasks.append(asyncio.create_task(agent.run(stop), name=f"agent-{name}"))


async def set_fleet_mode(port: int, mode: str) -> None:
    """Switch the simulated fleet on ``port`` to ``mode`` (``healthy``, ``dead``, ...)."""
    async with aiohttp.ClientSession() as s, s.post(
        f"http://127.0.0.1:{port}/_sim/state", json={"mode": mode}
    ) as r:
        r.raise_for_status()
