"""Embedded DNS answering rate: queries per CPU second through ``EmbeddedDnsServer.handle`` (the entry point
the UDP and TCP listeners call, without socket overhead), with and without the GeoIP table.

Cases, each ECS queries for a location-dependent service (``chat``: an EU segment and a default):
- ``client_networks``: only the inventory's prefixes (no GeoIP table): what main did;
- ``geoip_warm``: the bundled GeoIP table, 1,000 client subnets repeating (resolvers and ECS
  subnets repeat: the LRU cache answers);
- ``geoip_cold``: every query from a new /24 (each one a table lookup).

Usage: python -m bench.dns_qps [--queries N] [--no-geoip]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

import dns.edns
import dns.message

from gtm.models.plan import DesiredState, PoolMember, PoolPlan, RegionStatus, SegmentRoute, ServicePlan
from gtm.models.policy import Zone
from gtm.providers.embedded_dns import EmbeddedDnsServer
from gtm.providers.geo import PrefixTable

ZONE = Zone(name="gtm.example.com", nameservers=("ns1.gtm.example.com",))
FQDN = "chat.gtm.example.com"
ADDRESSES = {"us-east-1": "192.0.2.10", "us-west-2": "192.0.2.20", "eu-west-1": "192.0.2.30",
             "eu-central-1": "192.0.2.40"}


def _state() -> DesiredState:
    def pool(pid: str, seg: str, weights: dict[str, int]) -> PoolPlan:
        members = tuple(PoolMember(region=r, weight=w, reason="bench", changed_at=0.0) for r, w in weights.items())
        return PoolPlan(pool_id=pid, segment=seg, members=members, reason="bench")

    pools = [pool("eu", "eu", {"eu-west-1": 100, "eu-central-1": 100}),
             pool("default", "default", {r: 60 for r in ADDRESSES})]
    svc = ServicePlan("chat", FQDN, ZONE.name, 30, (SegmentRoute("eu", ("EU",), (), "eu", ("EU",)),
                                                    SegmentRoute("default", (), (), "default")))
    return DesiredState(generation=1, generated_at=0.0, policy_digest="bench", held=False, hold_reason="",
                        regions={r: RegionStatus(region=r, state="healthy", reason="bench") for r in ADDRESSES},
                        pools={p.pool_id: p for p in pools}, services={FQDN: svc},
                        endpoints={r: (("A", a),) for r, a in ADDRESSES.items()})


def _subnet(rng: random.Random) -> str:
    return f"{rng.choice([2, 5, 31, 46, 62, 77, 80, 81, 90, 109, 151, 176, 185, 188, 193, 212, 213, 217, 8, 24, 50, 64, 72, 98, 173, 184])}.{rng.randrange(256)}.{rng.randrange(256)}.0"  # noqa: E501


def _queries(subnets: list[str], n: int) -> list[bytes]:
    out = []
    for i in range(n):
        q = dns.message.make_query(FQDN, "A", id=i & 0xFFFF, use_edns=0)
        q.use_edns(0, 0, 1232, options=[dns.edns.ECSOption(subnets[i % len(subnets)], 24, 0)])
        out.append(q.to_wire())
    return out


def _rate(server: EmbeddedDnsServer, wires: list[bytes]) -> float:
    for w in wires[:200]:  # warm up the interpreter's caches, not the location cache
        server.handle(w, "127.0.0.1")
    t = time.process_time()  # CPU seconds: the machine is shared, wall time would measure the others
    for w in wires:
        server.handle(w, "127.0.0.1")
    return len(wires) / (time.process_time() - t)


def run(queries: int = 20_000, geoip: bool = True) -> dict[str, Any]:
    """Queries/s for each case (see the module docstring); best of three runs each."""
    rng = random.Random(7)
    repeating = [_subnet(rng) for _ in range(1000)]
    fresh = [_subnet(rng) for _ in range(queries)]
    table = PrefixTable()
    table.add("100.96.0.0/16", "EU")
    table.add("100.64.0.0/16", "NA")
    result: dict[str, Any] = {"queries": queries}
    plain = EmbeddedDnsServer([ZONE], table, rng=random.Random(1))
    plain.update(_state())
    result["client_networks_qps"] = round(max(_rate(plain, _queries(repeating, queries)) for _ in range(3)))
    if geoip:
        from gtm.providers.geoip import GeoIpTable

        warm = GeoIpTable.default()
        srv = EmbeddedDnsServer([ZONE], table, rng=random.Random(1), geoip=warm)
        srv.update(_state())
        result["geoip_warm_qps"] = round(max(_rate(srv, _queries(repeating, queries)) for _ in range(3)))
        rates = []
        for _ in range(3):  # a fresh table (empty cache) for every cold run
            srv = EmbeddedDnsServer([ZONE], table, rng=random.Random(1), geoip=GeoIpTable.default())
            srv.update(_state())
            rates.append(_rate(srv, _queries(fresh, queries)))
        result["geoip_cold_qps"] = round(max(rates))
        result["located"] = srv.location_counts
        result["table"] = warm.database_type
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--queries", type=int, default=20_000)
    ap.add_argument("--no-geoip", action="store_true", help="only the client_networks case (runs on main too)")
    args = ap.parse_args()
    print(json.dumps(run(args.queries, not args.no_geoip), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
