"""``gtm drill``: drills against the running installation (``drain``, ``failover``, ``kill``)
and the self-contained ones on throw-away local parts (``providers``, ``anycast``).

Exit codes of ``drain|failover|kill``: 0 passed (or a dry run that would start), 1 failed or
aborted (requests lost beyond the allowance, residency broken, a limit crossed, interrupted),
2 usage, 3 refused (the preflight's reasons are printed).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from gtm.cli.common import (
    EXIT_REFUSED,
    EXIT_USAGE,
    config_or_exit,
    console,
    err_console,
    fail,
    parse_hostport,
    policy_snapshot,
    print_json,
    run,
    store_url,
)
from gtm.cli.options import ActorOpt, DebugOpt, NsOpt, Output, OutputOpt, PoliciesOpt, RedisOpt, RegionsOpt
from gtm.config.loader import Config
from gtm.errors import GtmError, UsageError
from gtm.log import setup_logging
from gtm.models.drill import DrillKind, DrillReport

drill_app = typer.Typer(
    help=(
        "Drills. Against the running installation (--redis, the policy in force): `drain`, `failover`, "
        "`kill` REGION under real client load through a caching resolver, with a verdict and a report. "
        "Self-contained on 127.0.0.1: `providers`, `anycast`."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

_KIND_HELP: dict[str, str] = {
    "drain": (
        "Drain REGION (an ordinary drain: the safety rules apply, audited via=drill), hold it for --hold, then "
        "undrain. The planned path: traffic steps away, clients should lose nothing. **Safe in production** "
        "when the other regions have the headroom (the preflight projects it and refuses otherwise)."
    ),
    "failover": (
        "Make the engine treat REGION exactly as unhealthy (a failure move, immediate) with an override that "
        "expires by itself (`drills.lease_s` after the drill's last renewal: a killed drill cannot leave it "
        "behind), hold for --hold, then lift it. The fleet keeps running, so clients with cached answers still "
        "succeed. **Safe in production** for the same reasons as drain, and tests the fast path."
    ),
    "kill": (
        "Really stop REGION's fleet for --hold seconds (`POST /_sim/kill`): the unplanned path, with real "
        "errors until the agents detect it and the TTL runs out. **Only for fleets gtm runs itself** (the "
        "simulator, in staging or CI): refused when a fleet source is not a gtm simulator. The verdict checks "
        "the error window against detection + TTL + `drills.kill_margin_s`."
    ),
}

_COMMON_HELP = """

Before acting, the preflight shows the plan (answer shares per pool before → after) and refuses with
reasons when the safety rules, another drill, a rollout in flight, a policy `drills.blocked_windows` entry,
an existing override or an unknown / not-serving region forbid it. **Without --yes it is a dry run**
(exit 0 when it would start, 3 when refused).

While it runs, client populations (one per segment of the service, e.g. `eu` and `default`, from the
inventory's client networks; `--population NAME=SUBNET` to choose) resolve the service through a caching
resolver (Unbound started with a stub zone to the authoritative servers, or yours with `--resolver`) and
send small completion requests to the answered endpoint at `--rps` each. The policy's `drills:` limits
(error rate, p99 latency, max duration) are checked every second: crossing one, or Ctrl-C, restores at once.

Exit: 0 passed, 1 failed or aborted, 2 usage, 3 refused.

Examples:

    gtm drill drain eu-west-1 --reason "quarterly drill"                 # dry run: the plan
    gtm drill drain eu-west-1 --reason "quarterly drill" --yes --hold 120 --out reports/
    gtm drill failover us-west-2 --yes --resolver 10.0.0.53 --rps 20
    gtm drill kill eu-central-1 --yes --endpoint-port 8000 --endpoint-scheme http   # staging / CI only
"""


def _connect_map(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        addr, sep, url = item.partition("=")
        if not sep or not addr or not url.startswith(("http://", "https://")):
            raise UsageError(f"--connect wants ADDRESS=URL (e.g. 192.0.2.30=http://127.0.0.1:8000), got {item!r}")
        out[addr] = url
    return out


def _config_in_force(url: str, ns: str, policies: str, regions: str, debug: bool) -> Config:
    """The policy the leader runs (its snapshot in Redis), else the local files (exit 2 if invalid)."""
    snap = policy_snapshot(url, ns)
    return snap[0] if snap is not None else config_or_exit(policies, regions, debug)


def _run_kind(kind: DrillKind, *, region: str, hold: float, rps: float, max_requests: int, resolver: str | None,
              authoritative: str | None, endpoint_port: int, endpoint_scheme: str, connect: list[str],
              population: list[str], service: str | None, yes: bool, dry_run: bool, out: Path | None, actor: str,
              reason: str, baseline: float, probe_interval: float, redis: str | None, ns: str, policies: str,
              regions: str, output: Output, debug: bool) -> None:
    import aiohttp

    from gtm.drills import load as L
    from gtm.drills import runner
    from gtm.drills.live import DrillProgress, render_live
    from gtm.drills.report import write_report
    from gtm.store import connect as store_connect

    setup_logging("ERROR")
    url = store_url(redis)
    cfg = _config_in_force(url, ns, policies, regions, debug)
    try:
        svc = runner.service_for(cfg, region, service) if region in cfg.inventory.regions or service else None
        conn = _connect_map(connect)
        pops = [L.parse_population(p, svc) for p in population] if svc is not None and population else []
    except GtmError as exc:  # an unknown --service, a bad --population or --connect
        fail(UsageError(str(exc)), debug, EXIT_USAGE)
    act = yes and not dry_run

    async def go() -> tuple[Any, DrillReport | None]:  # (preflight, None) for a dry run, else (None, report)
        store = store_connect(url, ns=ns)
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     connector=aiohttp.TCPConnector(limit=0, force_close=True))
        try:
            if not act:
                return await runner.preflight(store, cfg, kind, region, http, hold_s=hold), None
            if svc is None:  # an unknown region: the preflight says so
                pf = await runner.preflight(store, cfg, kind, region, http, hold_s=hold)
                return None, runner.refused_report(kind, region, actor, pf, time.time())
            populations = pops or L.default_populations(svc, cfg.inventory)
            auth = _authoritative(cfg, svc.zone, authoritative)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            async with _resolver(resolver, svc.zone, auth) as (res_addr, desc):
                settings = L.LoadSettings(fqdn=svc.fqdn, resolver=res_addr, authoritative=auth[0] if auth else None,
                                          rps=rps,
                                          max_requests=max_requests, endpoint_port=endpoint_port,
                                          endpoint_scheme=endpoint_scheme, connect=conn, model=svc.model)
                opts = runner.DrillOptions(actor=actor, reason=reason, hold_s=hold, baseline_s=baseline,
                                           probe_interval_s=probe_interval)
                with Live(Text(f"{kind} {region}: preflight"), console=err_console, refresh_per_second=2,
                          transient=output is Output.json) as live:
                    def show(progress: DrillProgress) -> None:
                        live.update(render_live(progress))

                    report = await runner.run_drill(store, cfg, kind, region, settings=settings,
                                                    populations=populations, options=opts, session=http, stop=stop,
                                                    on_progress=show, resolver=desc)
            return None, report
        finally:
            await http.close()
            await store.aclose()

    pf, report = run(go, debug)
    if report is None:
        _print_preflight(pf, output, act)
        raise typer.Exit(EXIT_REFUSED if pf.refusals else 0)
    if report.verdict == "refused" and output is not Output.json:
        for line in report.plan:
            console.print(escape(line), highlight=False, soft_wrap=True)
    try:
        files = write_report(report, out) if out is not None else None
    except (GtmError, OSError) as exc:  # the drill is over and restored: say so, then the error
        console.print(escape(report.verdict_line()), highlight=False, soft_wrap=True)
        fail(exc, debug)
    paths = [str(files.json), str(files.png), str(files.html)] if files is not None else []
    if output is Output.json:
        print_json({**report.model_dump(mode="json"), "files": paths})
    else:
        colour = "green" if report.verdict == "passed" else "red"
        console.print(f"[{colour}]{escape(report.verdict_line())}[/]", highlight=False, soft_wrap=True)
        for f in paths:
            console.print(f"  report: {escape(f)}", highlight=False, soft_wrap=True)
    raise typer.Exit(report.exit_code)


def _authoritative(cfg: Config, zone: str, given: str | None) -> list[tuple[str, int]]:
    """``--authoritative HOST[:PORT]``, else every nameserver address of ``zone`` in the policy
    (port 53); empty when neither is known."""
    if given:
        return [parse_hostport(given, "--authoritative", 53)]
    z = next((z for z in cfg.policy.zones if z.name == zone), None)
    return [(addr, 53) for addr in sorted((z.nameserver_addresses if z is not None else {}).values())]


class _resolver:
    """``--resolver HOST[:PORT]`` as given, else an Unbound with a stub zone to ``auth``."""

    def __init__(self, given: str | None, zone: str, auth: list[tuple[str, int]]) -> None:
        self.given, self.zone, self.auth = given, zone, auth
        self.unbound: Any = None

    async def __aenter__(self) -> tuple[tuple[str, int], str]:
        if self.given:
            addr = parse_hostport(self.given, "--resolver", 53)
            return addr, f"--resolver {addr[0]}:{addr[1]}"
        if not self.auth:
            raise UsageError("no resolver: give --resolver HOST[:PORT], or --authoritative HOST:PORT (or the zone's "
                             "nameserver_addresses in the policy) for a local Unbound")
        from gtm.drills.unbound import Unbound

        self.unbound = Unbound(zone=self.zone, stub_addrs=self.auth)
        await self.unbound.__aenter__()
        return self.unbound.address, self.unbound.describe()

    async def __aexit__(self, *exc: object) -> None:
        if self.unbound is not None:
            await self.unbound.__aexit__(*exc)


def _print_preflight(pf: Any, output: Output, act: bool) -> None:
    if output is Output.json:
        print_json({"kind": pf.kind, "region": pf.region, "plan": pf.plan, "before": pf.before, "after": pf.after,
                    "refusals": pf.refusals, "dry_run": not act})
        return
    for line in pf.plan:
        console.print(escape(line), highlight=False, soft_wrap=True)
    if pf.refusals:
        err_console.print(f"[red]RefusedError[/]: {pf.kind} {escape(pf.region)} refused:")
        for r in pf.refusals:
            err_console.print(f"  - {escape(r)}", highlight=False, soft_wrap=True)
    elif not act:
        console.print("dry run: nothing done; add --yes to run the drill")


def _make(kind: DrillKind) -> Callable[..., None]:
    def command(
        region: str = typer.Argument(..., help="The region to drill, e.g. eu-west-1."),
        hold: float = typer.Option(30.0, "--hold", min=1, max=86_400, help="Seconds the change is held."),
        rps: float = typer.Option(5.0, "--rps", min=0.1, max=1000, help="Requests per second per population."),
        max_requests: int = typer.Option(20_000, "--max-requests", min=1, help="Stop sending after this many."),
        resolver: str | None = typer.Option(None, "--resolver", help="HOST[:PORT] of your caching resolver; "
                                            "default: a local Unbound with a stub zone to --authoritative."),
        authoritative: str | None = typer.Option(
            None, "--authoritative", help="HOST[:PORT] of the authoritative server (sampled each second, bypassing "
            "caches; Unbound's stub); default: the zone's nameserver_addresses in the policy."),
        endpoint_port: int = typer.Option(443, "--endpoint-port", min=1, max=65535,
                                          help="Port the answered endpoint serves completions on."),
        endpoint_scheme: str = typer.Option("https", "--endpoint-scheme", help="http or https."),
        connect: list[str] = typer.Option([], "--connect", help="ADDRESS=URL: reach an answered address at URL "
                                          "(when it is not directly reachable); repeatable."),
        population: list[str] = typer.Option([], "--population", help="NAME=SUBNET: a client population (ECS "
                                             "subnet); repeatable; default one per segment of the service."),
        service: str | None = typer.Option(None, "--service", help="The service to load; default the first "
                                           "that uses REGION."),
        yes: bool = typer.Option(False, "--yes", "-y", help="Run it (without: a dry run)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan and refusals only (the default)."),
        out: Path | None = typer.Option(None, "--out", help="Write the report files here."),
        actor: str = ActorOpt,
        reason: str = typer.Option("drill", "--reason", "-r", help="Why (audited)."),
        baseline: float = typer.Option(3.0, "--baseline", min=0, max=600, help="Seconds of load before acting."),
        probe_interval: float = typer.Option(1.0, "--probe-interval", min=0.1, max=60,
                                             help="The agents' probe interval (a kill's detection time)."),
        redis: str | None = RedisOpt,
        ns: str = NsOpt,
        policies: str = PoliciesOpt,
        regions: str = RegionsOpt,
        output: Output = OutputOpt,
        debug: bool = DebugOpt,
    ) -> None:
        if endpoint_scheme not in ("http", "https"):
            fail(UsageError("--endpoint-scheme must be http or https"), debug, EXIT_USAGE)
        _run_kind(kind, region=region, hold=hold, rps=rps, max_requests=max_requests, resolver=resolver,
                  authoritative=authoritative, endpoint_port=endpoint_port, endpoint_scheme=endpoint_scheme,
                  connect=connect, population=population, service=service, yes=yes, dry_run=dry_run, out=out,
                  actor=actor, reason=reason, baseline=baseline, probe_interval=probe_interval, redis=redis, ns=ns,
                  policies=policies, regions=regions, output=output, debug=debug)

    command.__doc__ = _KIND_HELP[kind] + _COMMON_HELP
    command.__name__ = f"drill_{kind}"
    return command


for _kind in ("drain", "failover", "kill"):
    drill_app.command(_kind)(_make(_kind))


@drill_app.command("providers")
def providers(output: Output = OutputOpt) -> None:
    """One failover published to the embedded DNS, a throw-away BIND 9 (`named`, RFC2136 + TSIG) and moto's
    Route 53 server at once, on 127.0.0.1 (no Redis, no cloud account); eu-west-1's fleet fails, then
    recovers; each provider is read back and the seconds until it excluded and restored the region are
    printed. Exits 0 when every provider converged and EU answers stayed in the EU; needs `named` and the
    `drill` extra (moto[server])."""
    from gtm.testing.provider_drill import run_provider_drill

    setup_logging("ERROR")
    ok = asyncio.run(run_provider_drill(console, json_out=output is Output.json))
    raise typer.Exit(0 if ok else 1)


@drill_app.command("anycast")
def anycast(
    output: Output = OutputOpt,
    regions: int = typer.Option(3, min=2, max=4, help="Regions (ExaBGP speakers) peering with BIRD."),
    graceful: float = typer.Option(2.0, "--graceful-s", min=0, help="Seconds a drain holds GRACEFUL_SHUTDOWN "
                                                                    "before the withdrawal."),
) -> None:
    """A private Redis, one BIRD 2 and per region a simulated fleet and an agent with its own ExaBGP on
    loopback; one fleet is killed (its agent withdraws alone), then one region is drained
    (GRACEFUL_SHUTDOWN, then withdrawn) and undrained; prints the seconds until BIRD's table changed. Needs
    `bird` (Debian bird2) and `exabgp` (the test extra)."""
    from gtm.testing.anycast_drill import run_anycast_drill

    setup_logging("ERROR")
    ok = asyncio.run(run_anycast_drill(console, regions=regions, graceful_s=graceful,
                                       json_out=output is Output.json))
    raise typer.Exit(0 if ok else 1)

