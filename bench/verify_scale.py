"""``gtm policy verify`` run time for 8, 12 and 16 regions (every failure subset: 2^n plans).

A synthetic policy: two services (one EU-pinned segment + catch-all each, capacity routing)
over n regions alternating EU/US jurisdictions.
"""

from __future__ import annotations

import time
from typing import Any

from gtm.engine.verify import verify
from gtm.models.policy import Policy
from gtm.models.region import Inventory, Region


def build(n: int) -> tuple[Policy, Inventory]:
    regions = {
        f"r{i:02d}": Region.model_validate({
            "name": f"r{i:02d}", "jurisdiction": "EU" if i % 2 else "US",
            "geography": {"continent": "EU" if i % 2 else "NA"},
            "endpoints": [{"address": f"192.0.2.{i + 1}"}],
            "fleet": [{"name": "v", "kind": "vllm", "url": "http://127.0.0.1:1", "replicas": 2 + i % 3}],
        })
        for i in range(n)
    }
    names = sorted(regions)
    seg = [{"name": "eu", "match": {"continents": ["EU"]}, "residency": {"jurisdictions": ["EU"]}}, {"name": "default"}]
    policy = Policy.model_validate({
        "zones": [{"name": "gtm.example.com", "nameservers": ["ns1.gtm.example.com"]}],
        "services": [
            {"name": "chat", "fqdn": "chat.gtm.example.com", "zone": "gtm.example.com", "model": "m",
             "regions": names, "segments": seg},
            {"name": "embed", "fqdn": "embed.gtm.example.com", "zone": "gtm.example.com", "model": "m",
             "regions": names[: max(2, n // 2)], "segments": seg},
        ],
    })
    return policy, Inventory(regions=regions)


def run(sizes: tuple[int, ...] = (8, 12, 16)) -> list[dict[str, Any]]:
    out = []
    for n in sizes:
        policy, inv = build(n)
        t0 = time.perf_counter()
        res = verify(policy, inv)
        res.seconds = time.perf_counter() - t0
        out.append({"regions": n, "plans": res.scenarios, "seconds": round(res.seconds, 2),
                    "us_per_plan": round(res.seconds / res.scenarios * 1e6, 1), "broken": res.broken,
                    "notable": len(res.notable)})
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
