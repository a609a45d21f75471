"""The zero-setup demo: four regions, simulated fleets, agents, controller and embedded DNS in one
process, on an embedded store (fakeredis), driven through a scripted scenario.

The regions, fleets and agents are ``gtm.testing.scenario``'s (shared with the provider drill);
only the CLI's ``gtm demo`` imports this module.

Every share printed comes from real DNS queries over UDP to the embedded server, with an EDNS
Client Subnet option placing the client in the EU or the US. Beside them, each step prints the
anycast decision per prefix and region from the controller's plan (announce with its AS-path
prepends, or withdraw); no BGP daemon runs in the demo (``gtm drill anycast`` runs the real path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from gtm.controller.loop import Controller, ControllerSettings
from gtm.models.override import Override
from gtm.models.plan import DesiredState
from gtm.providers.dnsclient import query
from gtm.providers.embedded_dns import EmbeddedDnsServer
from gtm.providers.geo import PrefixTable
from gtm.providers.geoip import GeoIpTable
from gtm.store import connect
from gtm.testing.ports import free_port
from gtm.testing.scenario import (
    ADDRESS_TO_REGION,
    ANYCAST_PREFIX,
    EU_CLIENT,
    EU_PREFIX,
    FQDN,
    REGIONS,
    US_CLIENT,
    scenario_config,
    set_fleet_mode,
    start_fleets_and_agents,
)


@dataclass
class Step:
    """One line of the timeline."""

    t: float
    title: str
    eu: dict[str, float]
    us: dict[str, float]
    took_s: float | None = None
    note: str = ""
    health: dict[str, str] = field(default_factory=dict)
    anycast: dict[str, dict[str, str]] = field(default_factory=dict)
    """prefix → region → ``announce``, ``announce +N`` (N AS-path prepends), ``withdraw``."""


@dataclass
class Demo:
    """The running demo's parts."""

    dns: EmbeddedDnsServer
    addr_to_region: dict[str, str]
    fleet_ports: dict[str, int]
    t0: float = field(default_factory=time.monotonic)
    steps: list[Step] = field(default_factory=list)
    eu_regions_seen: set[str] = field(default_factory=set)

    async def shares(self, subnet: str, n: int) -> dict[str, float]:
        counts: dict[str, int] = {}
        for _ in range(n):
            resp = await query("127.0.0.1", self.dns.port, FQDN, "A", client_subnet=subnet)
            region = "none"
            for rrset in resp.answer:
                for rd in rrset:
                    region = self.addr_to_region.get(rd.to_text(), "other")
            counts[region] = counts.get(region, 0) + 1
        if subnet == EU_CLIENT:
            self.eu_regions_seen.update(counts)
        return {r: c / n for r, c in sorted(counts.items())}

    async def wait_for(self, subnet: str, pred: Callable[[dict[str, float]], bool], timeout: float) -> float | None:
        """Seconds until ``pred(shares)`` holds for 3 rounds in a row (20 queries a round)."""
        start = time.monotonic()
        first_ok: float | None = None
        streak = 0
        while time.monotonic() - start < timeout:
            s = await self.shares(subnet, 20)
            if pred(s):
                first_ok = first_ok if first_ok is not None else time.monotonic() - start
                streak += 1
                if streak >= 3:
                    return first_ok
            else:
                first_ok, streak = None, 0
            await asyncio.sleep(0.02)
        return None

    async def record(self, title: str, n: int, took: float | None = None, note: str = "",
                     health: dict[str, str] | None = None, anycast: dict[str, dict[str, str]] | None = None) -> Step:
        step = Step(time.monotonic() - self.t0, title, await self.shares(EU_CLIENT, n),
                    await self.shares(US_CLIENT, n), took, note, health or {}, anycast or {})
        self.steps.append(step)
        return step

    async def set_fleet(self, region: str, mode: str) -> None:
        await set_fleet_mode(self.fleet_ports[region], mode)


DE_CLIENT = "80.128.5.0/24"
"""A Deutsche Telekom subnet: in no ``client_networks``, located in Germany by the GeoIP table."""


def _fmt(shares: dict[str, float]) -> str:
    return " · ".join(f"{r} {v:.0%}" for r, v in shares.items())


def anycast_view(state: DesiredState | None) -> dict[str, dict[str, str]]:
    """prefix → region → the plan's anycast decision: ``announce``, ``announce +N`` (N AS-path
    prepends: a reduced share), ``withdraw`` or ``withdraw (planned)``."""
    if state is None:
        return {}
    out: dict[str, dict[str, str]] = {}
    for prefix, anns in sorted(state.announcements.items()):
        row = out[prefix] = {}
        for a in anns:
            if a.action == "announce":
                row[a.region] = "announce" + (f" +{a.prepend}" if a.prepend else "")
            else:
                row[a.region] = "withdraw" + (" (planned)" if a.planned else "")
    return out


async def run_demo(console: Console, *, queries: int = 200, fast: bool = False, json_out: bool = False) -> bool:
    """Run the scenario; returns True when every expectation held."""
    ports = {r[0]: free_port() for r in REGIONS}
    cfg = scenario_config(ports)
    store = connect("embedded://", ns="demo")
    stop = asyncio.Event()
    runners: list[Any] = []
    tasks: list[asyncio.Task[Any]] = []
    await start_fleets_and_agents(cfg, ports, store, stop, runners, tasks, agent_prefix="demo")
    geoip = await asyncio.to_thread(GeoIpTable.default)  # the bundled GeoIP table: a German network is EU
    dns = EmbeddedDnsServer(cfg.policy.zones, PrefixTable.from_regions(cfg.inventory.regions.values()), geoip=geoip)
    await dns.start("127.0.0.1", 0)
    ctl = Controller(store, lambda: cfg, [dns], ControllerSettings(tick_s=0.25))
    tasks.append(asyncio.create_task(ctl.run(stop), name="controller"))
    demo = Demo(dns, ADDRESS_TO_REGION, ports)

    def health() -> dict[str, str]:
        st = ctl.state
        if st is None:
            return {}
        out = {}
        for r, rs in st.regions.items():
            out[r] = rs.state + (f" ({rs.override})" if rs.override else "")
        return out

    def bgp() -> dict[str, dict[str, str]]:
        return anycast_view(ctl.state)

    ok = True
    problems: list[str] = []
    if not json_out:
        console.print(f"[bold]gtm demo[/]: 4 regions, embedded store, DNS on 127.0.0.1:{dns.port} (UDP+TCP)")
        console.print(f"clients: EU subnet {EU_CLIENT}, US subnet {US_CLIENT}; {queries} real queries each per step\n")

    def say(step: Step) -> None:
        if json_out:
            return
        if step.title.startswith("steady"):
            label = "reached in"
        elif step.title.startswith("undrain") or " recovers " in step.title:
            label = "first answers after"
        else:
            label = "shift took"
        took = f" [cyan]({label} {step.took_s:.2f}s)[/]" if step.took_s is not None else ""
        console.print(f"[bold]+{step.t:5.1f}s[/] {step.title}{took}", soft_wrap=True)
        console.print(f"         EU clients: {_fmt(step.eu)}", soft_wrap=True, highlight=False)
        console.print(f"         US clients: {_fmt(step.us)}", soft_wrap=True, highlight=False)
        if step.health:
            hl = " · ".join(f"{r} {h}" for r, h in sorted(step.health.items()))
            console.print(f"         health:     {hl}", soft_wrap=True, highlight=False)
        for prefix, row in step.anycast.items():
            label = "EU seg." if prefix == EU_PREFIX else "default"
            an = " · ".join(f"{r} {d}" for r, d in sorted(row.items()))
            console.print(f"         anycast {prefix} ({label}): {an}", soft_wrap=True, highlight=False)
        if step.note:
            console.print(f"         {step.note}", soft_wrap=True, highlight=False)

    def expect(cond: bool, what: str) -> None:
        nonlocal ok
        if not cond:
            ok = False
            problems.append(what)
            if not json_out:
                console.print(f"[red]expectation failed[/]: {what}")

    try:
        # 1. steady state
        took = await demo.wait_for(US_CLIENT, lambda s: len([r for r in s if r not in ("none",)]) >= 3, 20)
        expect(took is not None, "steady state reached with regions answering")
        st = await demo.record("steady state: all four regions healthy", queries, took, health=health(),
                               anycast=bgp())
        expect(all(d.startswith("announce") for d in st.anycast.get(ANYCAST_PREFIX, {"-": "none"}).values()),
               f"{ANYCAST_PREFIX} announced from every region in steady state")
        say(st)
        de = await demo.shares(DE_CLIENT, 20)
        expect(set(de) <= {"eu-west-1", "eu-central-1"}, f"a German client ({DE_CLIENT}) gets EU regions only")
        if not json_out:
            console.print(f"         German client {DE_CLIENT} (Deutsche Telekom, located by the GeoIP table "
                          f"{geoip.database_type}): {_fmt(de)}", soft_wrap=True, highlight=False)

        # 2. a fleet fails
        failed = "eu-west-1"
        await demo.set_fleet(failed, "dead")
        took = await demo.wait_for(EU_CLIENT, lambda s: s.get(failed, 0) == 0 and s.get("none", 0) == 0, 15)
        expect(took is not None, f"{failed} excluded after its fleet failed")
        st = await demo.record(f"{failed} fleet fails (vLLM /health 503) → failover", queries, took,
                               note=f"reason: {ctl.state.regions[failed].reason if ctl.state else '?'}",
                               health=health(), anycast=bgp())
        expect(st.eu.get(failed, 0) == 0 and st.us.get(failed, 0) == 0, f"{failed} share is 0 %")
        expect(all(row.get(failed) == "withdraw" for row in st.anycast.values()) and bool(st.anycast),
               f"{failed} withdraws every anycast prefix at once (a failure: no graceful shutdown)")
        say(st)

        # 3. it recovers
        await demo.set_fleet(failed, "healthy")
        took = await demo.wait_for(EU_CLIENT, lambda s: s.get(failed, 0) > 0, 15)
        expect(took is not None, f"{failed} takes traffic again after recovery")
        say(await demo.record(f"{failed} recovers (rise 3 checks) → ramping back in planned steps", queries, took,
                              health=health(), anycast=bgp()))
        await asyncio.sleep(1.0 if fast else 4.5)
        st = await demo.record(f"{failed} back at full weight", queries, health=health(), anycast=bgp())
        expect(st.eu.get(failed, 0) > 0.2, f"{failed} back to a real share")
        say(st)

        # 4. operator drains an EU region
        drained = "eu-central-1"
        await store.put_override(Override(region=drained, kind="drain", reason="GPU driver upgrade",
                                          actor="demo-operator", since=time.time()))
        took = await demo.wait_for(EU_CLIENT, lambda s: s.get(drained, 0) == 0, 15)
        expect(took is not None, f"{drained} drained to 0 %")
        st = await demo.record(f"operator drains {drained} (step 64 per 1s)", queries, took, health=health(),
                               anycast=bgp())
        expect(st.eu.get(drained, 0) == 0 and st.us.get(drained, 0) == 0, f"drained {drained} at 0 %")
        expect(all(row.get(drained) == "withdraw (planned)" for row in st.anycast.values()) and bool(st.anycast),
               f"drained {drained} withdraws every anycast prefix as a planned move")
        say(st)

        # 5. undrain
        await store.delete_override(drained)
        took = await demo.wait_for(EU_CLIENT, lambda s: s.get(drained, 0) > 0, 15)
        expect(took is not None, f"{drained} takes traffic after undrain")
        await asyncio.sleep(1.0 if fast else 4.5)
        say(await demo.record(f"undrain {drained} → ramped back", queries, took, health=health(), anycast=bgp()))

        expect(demo.eu_regions_seen <= {"eu-west-1", "eu-central-1"},
               f"EU answers only ever named EU regions (saw {sorted(demo.eu_regions_seen)})")
        eu_announcers = {r for step in demo.steps for r, d in step.anycast.get(EU_PREFIX, {}).items()
                         if d.startswith("announce")}
        expect(bool(eu_announcers) and eu_announcers <= {"eu-west-1", "eu-central-1"},
               f"the EU prefix {EU_PREFIX} is only ever announced from EU regions (saw {sorted(eu_announcers)})")
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)
        await dns.stop()
        for runner in runners:
            await runner.cleanup()
        await store.aclose()

    if json_out:
        print(json.dumps({
            "ok": ok, "problems": problems,
            "eu_regions_seen": sorted(demo.eu_regions_seen),
            "steps": [s.__dict__ for s in demo.steps],
            "dns_updates": dns.updates_applied,
        }, indent=2))
        return ok
    t = Table(title="summary")
    t.add_column("check")
    t.add_column("result")
    t.add_row("EU-subnet answers only EU regions", ", ".join(sorted(demo.eu_regions_seen)))
    t.add_row(f"EU prefix {EU_PREFIX} announced from", ", ".join(sorted(
        {r for step in demo.steps for r, d in step.anycast.get(EU_PREFIX, {}).items() if d.startswith("announce")})))
    t.add_row("DNS updates applied", str(dns.updates_applied))
    t.add_row("controller cycles / plans", f"{ctl.stats.cycles} / {ctl.stats.plans}")
    console.print(t)
    console.print("[green]demo OK[/]" if ok else f"[red]demo FAILED[/]: {'; '.join(problems)}")
    return ok
