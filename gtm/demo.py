"""The zero-setup demo: four regions, simulated fleets, agents, controller and embedded DNS in one
process, on an embedded store (fakeredis), driven through a scripted scenario.

The regions, fleets and agents are ``gtm.testing.scenario``'s (shared with the provider drill);
only the CLI's ``gtm demo`` imports this module.

Every share printed comes from real DNS queries over UDP to the embedded server, with an EDNS
Client Subnet option placing the client in the EU or the US. Beside them, each step prints the
anycast decision per prefix and region from the controller's plan (announce with its AS-path
prepends, or withdraw); no BGP daemon runs in the demo (``gtm drill anycast`` runs the real path).

It ends with a drain drill under client load (``demo_drill``: the runner of ``gtm drill drain``)
and prints its verdict line and where its report files went.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gtm.config.loader import Config
from gtm.controller.loop import Controller, ControllerSettings
from gtm.drills.live import DrillProgress, render_live
from gtm.drills.load import LoadSettings, Population
from gtm.drills.report import ReportFiles, write_report
from gtm.drills.runner import DrillOptions, run_drill
from gtm.errors import StartupError
from gtm.models.drill import DrillReport
from gtm.models.override import Override
from gtm.models.plan import DesiredState
from gtm.providers.dnsclient import query
from gtm.providers.embedded_dns import EmbeddedDnsServer
from gtm.providers.geo import PrefixTable
from gtm.providers.geoip import GeoIpTable
from gtm.store import Store, connect
from gtm.testing.ports import free_port
from gtm.testing.scenario import (
    ADDRESS_TO_REGION,
    ANYCAST_PREFIX,
    EU_CLIENT,
    EU_PREFIX,
    FQDN,
    MODEL,
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


def _announced_where_weighted(state: DesiredState) -> bool:
    """Whether every prefix is announced exactly by the regions with weight > 0 in its pool."""
    pools = {ANYCAST_PREFIX: state.pool_for(FQDN, "default"), EU_PREFIX: state.pool_for(FQDN, "eu")}
    for prefix, pool in pools.items():
        announced = {a.region for a in state.announcements.get(prefix, ()) if a.action == "announce"}
        if pool is None or not announced or announced != {m.region for m in pool.active}:
            return False
    return True


@dataclass
class DemoDrill:
    """The demo's drain drill: its report and, when matplotlib is installed, its files."""

    report: DrillReport
    files: ReportFiles | None = None
    files_note: str = ""


async def demo_drill(console: Console, store: Store, cfg: Config, dns_port: int, fleet_ports: dict[str, int], *,
                     region: str = "eu-central-1", hold_s: float = 5.0, baseline_s: float = 2.0, rps: float = 10.0,
                     live: bool = True, report_dir: Path | None = None) -> DemoDrill:
    """A drain drill of ``region`` under client load, through ``gtm.drills.runner.run_drill``
    (the same runner as ``gtm drill drain``), on the demo's embedded store and DNS.

    The demo has no caching resolver (Unbound is not installed for ``make demo``): both client
    populations (EU ``EU_CLIENT``, US ``US_CLIENT``, ``rps`` requests per second each) query the
    embedded DNS server directly, so clients move with the answers instead of up to a TTL later.
    An answered endpoint address (192.0.2.x) is reached at its simulated fleet on 127.0.0.1
    (``fleet_ports``). The report files are written to ``report_dir`` (a new temporary directory
    by default) when matplotlib (the ``drill`` extra) is installed.

    Args:
        console: where the live view is drawn (``live``) while the drill runs.
        store / cfg: the demo's store and config (the drill's drain, lock and audit go there).
        dns_port: the embedded DNS server's UDP port on 127.0.0.1.
        fleet_ports: region → its simulated fleet's port on 127.0.0.1.
        region / hold_s / baseline_s / rps: the drill (seconds; requests per second per population).

    Returns:
        The report (its verdict says whether it passed) and the files, or why there are none.
    """
    connect_map = {addr: f"http://127.0.0.1:{fleet_ports[name]}" for addr, name in ADDRESS_TO_REGION.items()}
    settings = LoadSettings(fqdn=FQDN, resolver=("127.0.0.1", dns_port), authoritative=("127.0.0.1", dns_port),
                            rps=rps, endpoint_scheme="http", connect=connect_map, model=MODEL, timeout_s=2.0)
    populations = [Population("eu", EU_CLIENT, ("EU",)), Population("us", US_CLIENT)]
    options = DrillOptions(actor="demo-operator", reason="demo drill", hold_s=hold_s, baseline_s=baseline_s)
    resolver = f"the embedded DNS on 127.0.0.1:{dns_port}, queried directly (no caching resolver in the demo)"
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                 connector=aiohttp.TCPConnector(limit=0, force_close=True))
    view = Live(Text(f"drain {region}: preflight"), console=console, transient=True) if live else None

    def show(progress: DrillProgress) -> None:
        if view is not None:
            view.update(render_live(progress))

    try:
        with view if view is not None else contextlib.nullcontext():
            report = await run_drill(store, cfg, "drain", region, settings=settings, populations=populations,
                                     options=options, session=http, on_progress=show, resolver=resolver)
    finally:
        await http.close()
    out = report_dir if report_dir is not None else Path(tempfile.mkdtemp(prefix="gtm-demo-drill-"))
    try:  # matplotlib draws for about a second: off the loop that serves the demo's DNS
        return DemoDrill(report, await asyncio.to_thread(write_report, report, out))
    except (StartupError, OSError) as exc:
        return DemoDrill(report, None, f"no report files: {exc}")


async def run_demo(console: Console, *, queries: int = 200, fast: bool = False, json_out: bool = False,
                   drill_dir: Path | None = None) -> bool:
    """Run the scenario; returns True when every expectation held. The drill's report files go
    to ``drill_dir`` (default: a new temporary directory)."""
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
    drill: DemoDrill | None = None
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
        snapshot = ctl.state
        st = await demo.record("steady state: all four regions healthy", queries, took, health=health(),
                               anycast=anycast_view(snapshot))
        expect(snapshot is not None and _announced_where_weighted(snapshot),
               "each anycast prefix is announced exactly from the regions its segment's DNS pool weighs")
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

        # 6. a drain drill under client load: the runner of `gtm drill drain`
        drilled = "eu-west-1"
        if not json_out:
            console.print(f"[bold]+{time.monotonic() - demo.t0:5.1f}s[/] drain drill of {drilled} under client load "
                          "(EU and US clients, 10 requests/s each, through the embedded DNS)", soft_wrap=True)
        drill = await demo_drill(console, store, cfg, dns.port, ports, region=drilled, hold_s=6.0 if fast else 10.0,
                                 baseline_s=1.0 if fast else 2.0, live=not json_out, report_dir=drill_dir)
        rep = drill.report
        expect(rep.verdict == "passed", f"the drain drill passed: {rep.verdict_line()}")
        expect(rep.total_requests > 0 and rep.failed_requests == 0,
               f"the drain drill lost no request ({rep.failed_requests} of {rep.total_requests} failed)")
        expect(rep.residency_violations == 0, "no EU client was answered outside the EU during the drill")
        if not json_out:
            colour = "green" if rep.verdict == "passed" else "red"
            console.print(f"         [{colour}]{escape(rep.verdict_line())}[/]", soft_wrap=True, highlight=False)
            if drill.files is not None:
                console.print(f"         report: {drill.files.html} (and .json, .png)", soft_wrap=True,
                              highlight=False)
            else:
                console.print(f"         {escape(drill.files_note)}", soft_wrap=True, highlight=False)

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
            "drill": None if drill is None else {
                "verdict": drill.report.verdict, "verdict_line": drill.report.verdict_line(),
                "answers_moved_s": drill.report.answers_moved_s, "clients_moved_s": drill.report.clients_moved_s,
                "restored_s": drill.report.restored_s, "failed_requests": drill.report.failed_requests,
                "total_requests": drill.report.total_requests,
                "files": [] if drill.files is None else [str(drill.files.json), str(drill.files.png),
                                                         str(drill.files.html)],
            },
        }, indent=2))
        return ok
    t = Table(title="summary")
    t.add_column("check")
    t.add_column("result")
    t.add_row("EU-subnet answers only EU regions", ", ".join(sorted(demo.eu_regions_seen)))
    t.add_row(f"EU prefix {EU_PREFIX} announced from", ", ".join(sorted(
        {r for step in demo.steps for r, d in step.anycast.get(EU_PREFIX, {}).items() if d.startswith("announce")})))
    t.add_row("drain drill", "did not run" if drill is None else drill.report.verdict_line())
    t.add_row("DNS updates applied", str(dns.updates_applied))
    t.add_row("controller cycles / plans", f"{ctl.stats.cycles} / {ctl.stats.plans}")
    console.print(t)
    console.print("[green]demo OK[/]" if ok else f"[red]demo FAILED[/]: {'; '.join(problems)}")
    return ok
