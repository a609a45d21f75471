"""``plan()`` time versus policy size: N services × 20 regions, 1k / 10k / 100k services.

Services draw their regions from a fixed set of deployment shapes (as real fleets do: many
services share regional deployments), and a second run gives every service its own region
subset so no pool is shared (the worst case). Timed with ``time.perf_counter`` on one core,
with ``previous`` set (the steady-state path the controller runs). ``cold_first_plan_ms`` is the
first plan after a policy change, which also maps every service to its pools (memoised per
policy object afterwards).
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from gtm.engine import PlanCache, plan
from gtm.models.policy import Policy
from gtm.models.region import Inventory, Region
from gtm.models.report import FleetReport, ModelStats

N_REGIONS = 20


def build(n_services: int, *, distinct: bool, seed: int = 7) -> tuple[Policy, Inventory, dict[str, FleetReport]]:
    rng = random.Random(seed)
    names = [f"r{i:02d}" for i in range(N_REGIONS)]
    regions = {}
    for i, n in enumerate(names):
        eu = i % 2 == 0
        regions[n] = Region.model_validate({
            "name": n, "jurisdiction": "EU" if eu else "US",
            "geography": {"continent": "EU" if eu else "NA"},
            "endpoints": [{"address": f"192.0.2.{i + 1}"}],
        })
    inv = Inventory(regions=regions)
    shapes = [tuple(names)] + [tuple(sorted(rng.sample(names, rng.randint(4, 20)))) for _ in range(15)]
    services = []
    for s in range(n_services):
        if distinct:
            regs = tuple(sorted(rng.sample(names, rng.randint(6, 20))))
            if s % 2 == 0:
                regs = tuple(names)  # the literal 20-region case for half of them
                regs = tuple(sorted(set(regs) - {names[s % N_REGIONS]}))
        else:
            regs = shapes[s % len(shapes)]
        if not any(int(r[1:]) % 2 == 0 for r in regs):
            regs = (*regs, "r00")
        services.append({
            "name": f"svc{s}", "fqdn": f"svc{s}.gtm.example.com", "zone": "gtm.example.com",
            "model": "m", "regions": list(regs),
            "segments": [
                {"name": "eu", "match": {"continents": ["EU"]}, "residency": {"jurisdictions": ["EU"]}},
                {"name": "default"},
            ],
        })
    policy = Policy.model_validate({
        "zones": [{"name": "gtm.example.com", "nameservers": ["ns1.gtm.example.com"]}],
        "services": services,
    })
    now = 1_800_000_000.0
    reports = {
        n: FleetReport(
            region=n, agent_id="bench", seq=1, observed_at=now, interval_s=2.0, healthy=True,
            consecutive_ok=10,
            models={"m": ModelStats(model="m", replicas_total=4, replicas_healthy=4, spare_capacity=1 + i % 4)},
            spare_capacity=1 + i % 4,
        )
        for i, n in enumerate(names)
    }
    return policy, inv, reports


def time_plan(n_services: int, *, distinct: bool, repeats: int = 5) -> dict[str, Any]:
    policy, inv, reports = build(n_services, distinct=distinct)
    now = 1_800_000_000.0
    cache = PlanCache()
    t0 = time.perf_counter()
    prev = plan(policy, inv, reports, {}, None, now, digest="bench", cache=cache)  # cold: compiles services → pools
    cold_ms = (time.perf_counter() - t0) * 1000
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        prev = plan(policy, inv, reports, {}, prev, now + 1 + i, digest="bench", cache=cache)
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "services": n_services,
        "regions": N_REGIONS,
        "distinct_pools": len(prev.pools),
        "shared_pools": not distinct,
        "median_ms": round(statistics.median(times), 2),
        "cold_first_plan_ms": round(cold_ms, 2),
        "min_ms": round(min(times), 2),
        "repeats": repeats,
    }


def time_example_policy(repeats: int = 2000) -> dict[str, Any]:
    """``plan()`` on the repository's own ``policies/`` and ``regions/``, every region healthy.

    ``steady_us``: the same reports every time. ``changing_us``: every region's spare capacity
    per model moves on every plan (no pool can be reused). Microseconds, median.
    """
    from pathlib import Path

    from gtm.config import load_config

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / "policies", root / "regions")
    now = 1_800_000_000.0
    models = sorted({s.model for s in cfg.policy.services if s.model})

    def reports(k: int) -> dict[str, FleetReport]:
        out = {}
        for i, r in enumerate(sorted(cfg.inventory.regions)):
            spare = 1.0 + 0.5 * ((k + i) % 5)
            out[r] = FleetReport(
                region=r, agent_id="bench", seq=1, observed_at=now, interval_s=2.0, healthy=True,
                consecutive_ok=10, spare_capacity=spare * len(models),
                models={m: ModelStats(model=m, replicas_total=4, replicas_healthy=4, spare_capacity=spare)
                        for m in models},
            )
        return out

    cache = PlanCache()
    prev = plan(cfg.policy, cfg.inventory, reports(0), {}, None, now, digest=cfg.digest, cache=cache)
    steady, changing = [], []
    same = reports(0)
    varied = [reports(k) for k in range(5)]
    def fresh(reps: dict[str, FleetReport], t: float) -> dict[str, FleetReport]:
        return {r: rep.model_copy(update={"observed_at": t}) for r, rep in reps.items()}

    t = now
    for _ in range(repeats):
        t += 0.5
        reps = fresh(same, t)
        t0 = time.perf_counter()
        prev = plan(cfg.policy, cfg.inventory, reps, {}, prev, t, digest=cfg.digest, cache=cache)
        steady.append(time.perf_counter() - t0)
    for i in range(repeats):
        t += 0.5
        reps = fresh(varied[i % 5], t)
        t0 = time.perf_counter()
        prev = plan(cfg.policy, cfg.inventory, reps, {}, prev, t, digest=cfg.digest, cache=cache)
        changing.append(time.perf_counter() - t0)
    assert not prev.held, prev.hold_reason
    return {
        "services": len(cfg.policy.services), "regions": len(cfg.inventory.regions), "pools": len(prev.pools),
        "steady_us": round(statistics.median(steady) * 1e6, 1),
        "changing_us": round(statistics.median(changing) * 1e6, 1),
        "repeats": repeats,
    }


def run(sizes: tuple[int, ...] = (1_000, 10_000, 100_000)) -> dict[str, Any]:
    out: dict[str, Any] = {"example_policy": time_example_policy(), "shared": [], "distinct": []}
    for n in sizes:
        out["shared"].append(time_plan(n, distinct=False, repeats=5 if n <= 10_000 else 3))
        out["distinct"].append(time_plan(n, distinct=True, repeats=5 if n <= 10_000 else 3))
    base = out["shared"][0]["median_ms"] / out["shared"][0]["services"]
    out["linearity"] = [round(r["median_ms"] / r["services"] / base, 2) for r in out["shared"]]
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run((1_000, 10_000)), indent=2))
