"""The ``gtm`` command line.

Exit codes (scripts can trust them):
  0  success
  1  error (Redis unreachable, provider failure, ...), printed as ``ErrorType: message``
  2  usage error (bad flags), or a policy/inventory that does not validate
  3  refused: the request is valid but unsafe or impossible now (e.g. unknown region)
  4  differs: ``gtm plan --candidate ... --exit-code`` found a routing difference (distinct from
     1 so that CI can tell "this change moves traffic" from "the check could not run")
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.markup import escape

from gtm.cli.common import (
    config_or_exit,
    config_or_warn,
    console,
    err_console,
    fail,
    parse_hostport,
    policy_snapshot,
    print_json,
    run,
    store_url,
)
from gtm.cli.options import (
    DebugOpt,
    LogFormat,
    LogFormatOpt,
    NsOpt,
    Output,
    OutputOpt,
    PoliciesOpt,
    RedisOpt,
    RegionsOpt,
)
from gtm.cli.overrides import drain, undamp, undrain
from gtm.config.loader import Config, load_config
from gtm.config.settings import redact
from gtm.errors import ConfigError, StartupError, TaskCrashedError, UsageError
from gtm.log import get_logger, setup_logging

T = TypeVar("T")

app = typer.Typer(
    name="gtm",
    help=(
        "gtm: a global traffic manager for multi-region LLM inference fleets.\n\n"
        "Region agents report fleet health and spare GPU capacity into Redis; the controller "
        "plans weighted, residency-safe routing and publishes it to DNS.\n\n"
        "Start with `gtm demo` (no setup), then `gtm status`, `gtm plan`, `gtm drain`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
policy_app = typer.Typer(help="Validate policy and inventory files.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
from gtm.cli.rollout import rollout_app  # noqa: E402 - the sub-app needs the shared options above

app.add_typer(rollout_app, name="rollout")
from gtm.cli.drill import drill_app  # noqa: E402

app.add_typer(drill_app, name="drill")

log = get_logger("cli")


PoliciesGitOpt = typer.Option(
    None, "--policies-git", envvar="GTM_POLICIES_GIT",
    help="Read the policy in force from Git instead of --policies: REPO[@REF], REPO a local repository or a "
    "URL (cloned under $GTM_GIT_CACHE or ~/.cache/gtm/git). Only committed files are read.",
)
PoliciesPathOpt = typer.Option(
    "policies", "--policies-path", help="Policy file or directory inside the Git repository (with Git refs)."
)
GitRegionsPathOpt = typer.Option(
    None, "--git-regions-path",
    help="Region inventory directory inside the Git repository; default: --regions on local disk.",
)


def _config_in_force(
    policies: str, regions: str, policies_git: str | None, policies_path: str, git_regions_path: str | None,
    debug: bool,
) -> Config:
    """--policies files, or the commit --policies-git REPO[@REF] names (exit 2 if it does not validate)."""
    if not policies_git:
        return config_or_exit(policies, regions, debug)
    from gtm.config.git import load_git_spec, parse_git_spec

    try:
        return load_git_spec(parse_git_spec(policies_git), policies_path=policies_path, regions_dir=regions,
                             regions_path=git_regions_path)
    except ConfigError as exc:
        fail(exc, debug, 2)
    raise AssertionError("unreachable")


def _hostport(value: str, flag: str) -> tuple[str, int]:
    try:
        return parse_hostport(value, flag)
    except UsageError as exc:
        fail(exc, False, 2)


# -- status / plan ------------------------------------------------------------------------


@app.command()
def status(
    redis: str | None = RedisOpt,
    ns: str = NsOpt,
    policies: str = PoliciesOpt,
    regions: str = RegionsOpt,
    output: Output = OutputOpt,
    debug: bool = DebugOpt,
) -> None:
    """Show each region's health, spare capacity, report age, overrides and pool weights.

    Reads Redis only; changes nothing. Exit 1 if Redis is unreachable.
    """
    from gtm.cli.render import render_status
    from gtm.controller.status import gather_status
    from gtm.store import connect

    cfg = config_or_warn(policies, regions)

    async def go() -> dict[str, Any]:
        store = connect(store_url(redis), ns=ns)
        try:
            return await gather_status(store, cfg)
        finally:
            await store.aclose()

    data = run(go, debug)
    if output is Output.json:
        print_json(data)
    else:
        render_status(console, data)


@app.command("plan")
def plan_cmd(
    redis: str | None = RedisOpt,
    ns: str = NsOpt,
    policies: str = PoliciesOpt,
    regions: str = RegionsOpt,
    output: Output = OutputOpt,
    debug: bool = DebugOpt,
    candidate: str | None = typer.Option(
        None, "--candidate",
        help="Show the routing diff from the policy in force (--policies or --policies-git) to this candidate: "
        "a policy file/directory, or a Git ref [REPO@]REF (REPO defaults to '.'; 'git:' forces Git).",
    ),
    policies_git: str | None = PoliciesGitOpt,
    policies_path: str = PoliciesPathOpt,
    git_regions_path: str | None = GitRegionsPathOpt,
    assume_healthy: bool = typer.Option(
        False, "--assume-healthy",
        help="With --candidate: plan as if every region were healthy with equal spare capacity "
        "(no Redis needed; for CI).",
    ),
    exit_code: bool = typer.Option(
        False, "--exit-code", help="With --candidate: exit 4 when the routing differs (like git diff --exit-code)."
    ),
    providers: bool = typer.Option(
        False, "--providers",
        help="Also observe each DNS provider of the policy (Route 53, Cloud DNS, RFC2136) and show the record "
        "changes it would make (reads the providers; writes nothing).",
    ),
) -> None:
    """Show what the controller would decide now, and why (a dry run: writes nothing).

    Runs the policy engine on the reports and overrides in Redis and the policy files given,
    against the desired state in force. Exit 0 whether or not there are changes.

    With --candidate: plans the policy in force and the candidate from the same inputs and shows
    the routing diff a reviewer needs: per service/segment the regions whose weight changes
    (before → after, with traffic shares), services/segments/pools added or removed, residency
    pins, client matches and pool modes changed. Exit 0 (or 4 with --exit-code when it differs),
    2 if the candidate does not validate, 1 if the inputs in Redis are stale.
    """
    if candidate is not None:
        _plan_candidate(redis, ns, policies, regions, output, debug, candidate, policies_git, policies_path,
                        git_regions_path, assume_healthy, exit_code)
        return
    from gtm.cli.render import render_plan
    from gtm.controller.status import announcement_rows, plan_now, pools_with_services
    from gtm.store import connect

    cfg = _config_in_force(policies, regions, policies_git, policies_path, git_regions_path, debug)

    async def go() -> Any:
        from gtm.controller.provider_plan import plan_providers

        store = connect(store_url(redis), ns=ns)
        try:
            t0 = time.perf_counter()
            state, previous = await plan_now(store, cfg)
            ms = (time.perf_counter() - t0) * 1000
            outcomes = await plan_providers(cfg.policy, state) if providers and state.services else []
            return state, previous, ms, outcomes
        finally:
            await store.aclose()

    state, previous, ms, outcomes = run(go, debug)
    changed = previous is None or previous.routing_digest() != state.routing_digest()
    if output is Output.json:
        print_json(
            {
                "providers": [o.to_dict() for o in outcomes],
                "changed": changed,
                "held": state.held,
                "hold_reason": state.hold_reason,
                "generation": state.generation,
                "decisions": [
                    {"subject": d.subject, "action": d.action, "reason": d.reason}
                    for d in state.decisions
                ],
                "pools": pools_with_services(state),
                "announcements": announcement_rows(state),
                "plan_ms": round(ms, 3),
            }
        )
    else:
        render_plan(console, state, previous)
        console.print(f"planned in {ms:.1f} ms (including Redis reads)")
        _render_provider_outcomes(outcomes, applied=False)
    if any(o.error for o in outcomes):
        raise typer.Exit(1)


def _render_provider_outcomes(outcomes: list[Any], *, applied: bool) -> None:
    for o in outcomes:
        if o.error:
            err_console.print(f"[red]provider error[/]: {escape(str(o.error))}", highlight=False)
            if not o.applied:
                continue
            console.print(f"provider {escape(o.name)}: partial: {len(o.applied)} zone(s) applied, "
                          f"{len(o.failed)} failed: {escape(', '.join(o.failed))}", highlight=False, soft_wrap=True)
        done = {a["zone"] for a in o.applied}
        for p in o.plans if not o.error else [p for p in o.plans if p.zone in done]:
            summ = p.summary()
            verb = "applied" if applied else "would"
            head = f"provider {o.name} ({o.kind}) zone {p.zone}: "
            if p.empty:
                console.print(head + "[green]in sync[/] (no change, no API call)")
                for conflict in p.conflicts:
                    console.print(f"  [yellow]conflict[/]: {escape(str(conflict))}", highlight=False)
                continue
            console.print(head + f"{verb} create {summ['create']}, update {summ['update']}, delete {summ['delete']} "
                          f"of {p.owned_before} owned record sets", highlight=False)
            for c in p.changes[:20]:
                rs = c.record
                sid = f" [{rs.set_identifier}]" if rs.set_identifier else ""
                w = f" weight {rs.weight}" if rs.weight is not None else ""
                vals = ",".join(c.new.values if c.new else c.old.values if c.old else ())
                console.print(f"  {c.action:6} {rs.name} {rs.rdtype}{sid}{w} {vals}", highlight=False, markup=False)
            if len(p.changes) > 20:
                console.print(f"  ... {len(p.changes) - 20} more (-o json lists them)")
            for conflict in p.conflicts:
                console.print(f"  [yellow]conflict[/]: {escape(str(conflict))}", highlight=False)
        for a in o.applied:
            console.print(f"  {a['zone']}: {a['changes']} change(s) in {a['api_calls']} API call(s)")


@app.command("apply")
def apply_cmd(
    yes: bool = typer.Option(False, "--yes", "--doit", help="Apply for real (without it: a dry run)."),
    force: bool = typer.Option(False, "--force", help="Apply a plan that touches more than a zone's "
                               "max_change_fraction of owned record sets."),
    provider: list[str] = typer.Option([], "--provider", help="Only these providers (repeatable)."),
    redis: str | None = RedisOpt,
    ns: str = NsOpt,
    policies: str = PoliciesOpt,
    regions: str = RegionsOpt,
    output: Output = OutputOpt,
    debug: bool = DebugOpt,
) -> None:
    """Publish the routing the engine wants now to the policy's DNS providers, out of band.

    A dry run unless --yes (or --doit): shows per provider and zone the record changes. Only
    record sets gtm owns are touched; a plan that updates/deletes more than the provider's
    max_change_fraction is refused (exit 3) unless --force. The controller normally does this
    by itself; use apply to bootstrap a zone or after fixing a provider. Exit 1 on a provider error.
    """
    from gtm.controller.provider_plan import apply_providers, plan_providers
    from gtm.controller.status import plan_now
    from gtm.store import connect

    cfg = config_or_exit(policies, regions, debug)
    if not [p for p in cfg.policy.providers if p.kind != "embedded"]:
        err_console.print("the policy names no DNS providers (`providers:`); nothing to apply")
        raise typer.Exit(0)

    async def go() -> Any:
        store = connect(store_url(redis), ns=ns)
        try:
            state, _ = await plan_now(store, cfg)
        finally:
            await store.aclose()
        if not state.services:
            return state, []
        if yes:
            return state, await apply_providers(cfg.policy, state, force=force, names=provider)
        return state, await plan_providers(cfg.policy, state, names=provider)

    state, outcomes = run(go, debug)
    if not state.services:
        err_console.print(f"[red]RefusedError[/]: nothing to publish: {escape(state.hold_reason or 'no routing yet')}")
        raise typer.Exit(3)
    if output is Output.json:
        print_json({"dry_run": not yes, "generation": state.generation, "providers": [o.to_dict() for o in outcomes]})
    else:
        if not yes:
            console.print("[bold]dry run[/]: nothing written (add --yes to apply)")
        _render_provider_outcomes(outcomes, applied=yes)
    if any("UnsafePlanError" in o.error for o in outcomes):
        raise typer.Exit(3)
    if any(o.error for o in outcomes):
        raise typer.Exit(1)


def _plan_candidate(
    redis: str | None, ns: str, policies: str, regions: str, output: Output, debug: bool, candidate: str,
    policies_git: str | None, policies_path: str, git_regions_path: str | None, assume_healthy: bool,
    exit_code: bool,
) -> None:
    from gtm.config.git import load_candidate
    from gtm.controller.routing_diff import candidate_states, diff_report, render_lines, routing_diff
    from gtm.store import connect

    cfg = _config_in_force(policies, regions, policies_git, policies_path, git_regions_path, debug)
    try:
        cand = load_candidate(candidate, policies_path=policies_path, regions_dir=regions,
                              regions_path=git_regions_path)
    except ConfigError as exc:
        fail(exc, debug, 2)

    async def go() -> Any:
        if assume_healthy:
            return await candidate_states(None, cfg, cand, time.time())
        store = connect(store_url(redis), ns=ns)
        try:
            return await candidate_states(store, cfg, cand, time.time())
        finally:
            await store.aclose()

    before, after = run(go, debug)
    if before.held or after.held:
        err_console.print(f"[red]StaleInputs[/]: {escape(before.hold_reason or after.hold_reason)}; "
                          "a routing diff would "
                          "be meaningless (use --assume-healthy to compare without a live fleet)", highlight=False)
        raise typer.Exit(1)
    changes = routing_diff(before, after)
    doc = diff_report(cfg, cand, before, after, changes)
    if output is Output.json:
        print_json(doc)
    else:
        for line in render_lines(doc):
            console.print(line, highlight=False, soft_wrap=True, markup=False)
    if exit_code and changes:
        raise typer.Exit(4)


# -- drain / undrain ----------------------------------------------------------------------


app.command()(drain)
app.command()(undrain)
app.command()(undamp)


# -- policy -------------------------------------------------------------------------------


@policy_app.command("validate")
def policy_validate(
    paths: list[str] = typer.Argument(None, help="Policy files or directories (default: --policies)."),
    policies: str = PoliciesOpt,
    regions: str = RegionsOpt,
    output: Output = OutputOpt,
) -> None:
    """Check policy and inventory files; print every error with file, line, field and value.

    Exit 0 when valid, 2 when not. Nothing running is affected.
    """
    targets = paths or [policies]
    try:
        cfg = load_config(targets, regions)
    except ConfigError as exc:
        if output is Output.json:
            print_json({"valid": False, "errors": exc.reasons})
        else:
            for r in exc.reasons:
                err_console.print(r, highlight=False, soft_wrap=True, markup=False)
            err_console.print(f"[red]invalid[/]: {len(exc.reasons)} problem(s)")
        raise typer.Exit(2) from None
    if output is Output.json:
        print_json({"valid": True, "digest": cfg.digest, "files": list(cfg.files), "warnings": list(cfg.warnings)})
    else:
        for w in cfg.warnings:
            err_console.print(f"[yellow]warning[/]: {escape(w)}", highlight=False)
        console.print(
            f"[green]valid[/]: {len(cfg.policy.services)} service(s), "
            f"{len(cfg.inventory.regions)} region(s), digest {cfg.digest[:19]}"
        )


@policy_app.command("verify")
def policy_verify(
    paths: list[str] = typer.Argument(None, help="Policy files or directories (default: --policies)."),
    policies: str = PoliciesOpt,
    regions: str = RegionsOpt,
    load: float = typer.Option(0.5, min=0.0, max=1.0, help="Assumed load per replica, fraction 0..1."),
    max_exhaustive: int = typer.Option(16, min=1, max=20, help="Plan every failure subset up to this many regions."),
    max_rows: int = typer.Option(40, min=0, help="Rows of the table at most (JSON lists them all)."),
    output: Output = OutputOpt,
) -> None:
    """Plan every combination of region failures (and each region drained) and check the invariants.

    Prints which combinations leave a segment dark, over capacity, or relying on fail-open /
    fail-static / spill / a fallback service. Exit 0 when every invariant holds (residency,
    failover, drains never gain weight, determinism), 1 when one breaks, 2 for an invalid policy.
    Every subset up to 16 regions (65,536 plans); past that, all subsets of up to k failures.
    """
    from rich.table import Table

    from gtm.engine.verify import verify

    try:
        cfg = load_config(paths or [policies], regions)
    except ConfigError as exc:
        fail(exc, False, 2)
    t0 = time.perf_counter()
    res = verify(cfg.policy, cfg.inventory, load=load, max_exhaustive=max_exhaustive)
    res.seconds = time.perf_counter() - t0
    if output is Output.json:
        print_json({
            "regions": list(res.regions), "exhaustive": res.exhaustive, "max_failures": res.max_failures,
            "scenarios": res.scenarios, "broken": res.broken, "seconds": round(res.seconds, 3),
            "notable": [sc.__dict__ for sc in res.notable],
        })
    else:
        scope = "every combination" if res.exhaustive else f"every combination of up to {res.max_failures} failures"
        console.print(
            f"{len(res.regions)} regions, {scope}: {res.scenarios} plans in {res.seconds:.2f}s; "
            f"{len(res.notable)} notable, {res.broken} breaking an invariant"
        )
        t = Table()
        for col in ("failed / drained", "dark", "over capacity", "relies on", "INVARIANT BROKEN"):
            t.add_column(col, overflow="fold")
        rows = sorted(res.notable, key=lambda s: (not s.broken, s.drained is not None, len(s.failed)))
        for sc in rows[:max_rows]:
            label = f"drain {sc.drained}" if sc.drained else (", ".join(sc.failed) or "(none)")
            t.add_row(label, "\n".join(sc.dark), "\n".join(sc.over_capacity), "\n".join(sc.relies_on),
                      "[red]" + "\n".join(sc.broken) + "[/]" if sc.broken else "")
        if rows:
            console.print(t)
        if len(rows) > max_rows:
            console.print(f"... {len(rows) - max_rows} more (use -o json for all)")
        console.print("[red]invariants broken[/]" if res.broken else "[green]every invariant holds[/]")
    if res.broken:
        raise typer.Exit(1)


# -- daemons ------------------------------------------------------------------------------


def _install_signal_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


@app.command()
def agent(
    region: str = typer.Option(..., "--region", help="This agent's region (from the inventory)."),
    redis: str | None = RedisOpt,
    ns: str = NsOpt,
    regions: str = RegionsOpt,
    scrape_interval: float | None = typer.Option(None, help="Seconds between fleet scrapes [default: 0.25]."),
    heartbeat: float | None = typer.Option(None, help="A report is written at least this often, seconds "
                                                       "[default: 2]."),
    report_ttl: float | None = typer.Option(None, help="Redis expiry of a report, seconds [default: 6]."),
    scrape_timeout: float | None = typer.Option(None, help="Deadline for a fleet source's answers, seconds "
                                                           "[default: 0.5]."),
    probe_interval: float | None = typer.Option(
        None, help="Seconds between synthetic completion probes of a source [default: 1]."),
    probe_timeout: float | None = typer.Option(
        None, help="Deadline of one completion probe (whole answer), seconds [default: 2]."),
    vantage_interval: float | None = typer.Option(
        None, help="Seconds between probes of the other regions' vantage_url (as a vantage point) [default: 1]."),
    agent_id: str | None = typer.Option(None, help="Agent id (default host:pid)."),
    bgp: str = typer.Option(
        "off", "--bgp", help="Anycast speaker: 'exabgp' runs ExaBGP with the region's bgp section and "
        "announces the plan's anycast prefixes (withdrawn at once when the own fleet fails); 'off'."),
    bgp_dir: str | None = typer.Option(
        None, "--bgp-dir", help="ExaBGP's config, API socket, log and pid file [default: /run/gtm/bgp-REGION]."),
    exabgp_bin: str | None = typer.Option(None, "--exabgp-bin", help="The exabgp executable [default: beside "
                                                                      "this Python, else on PATH]."),
    bgp_graceful_s: float | None = typer.Option(
        None, "--bgp-graceful-s", help="Seconds a planned withdrawal is announced with GRACEFUL_SHUTDOWN "
        "(65535:0) first [default: 5]."),
    bgp_fall: int | None = typer.Option(None, "--bgp-fall", help="Failed own-fleet checks that withdraw at "
                                                                 "once [default: 2, the policy's fall]."),
    bgp_rise: int | None = typer.Option(None, "--bgp-rise", help="Good checks before re-announcing "
                                                                 "[default: 3, the policy's rise]."),
    metrics_listen: str = typer.Option(
        "off", "--metrics-listen",
        help="Serve the agent's Prometheus metrics on host:port (GET /metrics); 'off' to disable."),
    log_level: str = typer.Option("INFO", envvar="GTM_LOG_LEVEL"),
    log_format: LogFormat = LogFormatOpt,
) -> None:
    """Run the region agent: scrape the fleet, report health and spare capacity to Redis.

    Publishes at once when the verdict changes; otherwise one report per heartbeat.
    Keeps running through Redis outages and unreachable fleet endpoints. Stop with SIGTERM
    (with --bgp exabgp it withdraws every anycast prefix first).
    """
    from gtm.agent.daemon import AgentSettings, RegionAgent
    from gtm.config.loader import load_inventory
    from gtm.store import connect

    setup_logging(log_level, json_lines=log_format == LogFormat.json)
    try:
        inv = load_inventory(regions)
    except ConfigError as exc:
        fail(exc, False, 2)
    if region not in inv.regions:
        known = ", ".join(sorted(inv.regions))
        err_console.print(f"[red]ConfigError[/]: unknown region {escape(repr(region))}; known: {known}")
        raise typer.Exit(2)
    given = {"scrape_interval_s": scrape_interval, "heartbeat_s": heartbeat, "report_ttl_s": report_ttl,
             "scrape_timeout_s": scrape_timeout, "probe_interval_s": probe_interval,
             "probe_timeout_s": probe_timeout, "vantage_interval_s": vantage_interval}
    settings = AgentSettings(**{k: v for k, v in given.items() if v is not None})  # the rest: AgentSettings' defaults
    if bgp not in ("off", "exabgp"):
        err_console.print(f"[red]UsageError[/]: --bgp must be exabgp or off, not {escape(repr(bgp))}")
        raise typer.Exit(2)
    if bgp == "exabgp" and inv.regions[region].bgp is None:
        err_console.print(f"[red]ConfigError[/]: --bgp exabgp needs a bgp section in region {escape(region)}'s "
                          "inventory (local_asn, local_address, next_hop, peers)")
        raise typer.Exit(2)
    bgp_given = {"graceful_s": bgp_graceful_s, "fall": bgp_fall, "rise": bgp_rise}
    metrics_addr = _hostport(metrics_listen, "--metrics-listen") if metrics_listen != "off" else None
    url = store_url(redis)
    log.info("agent: region %s, redis %s, namespace %s", region, redact(url), ns)

    async def go() -> None:
        from gtm.agent.bgp import BgpSettings, BgpSpeaker

        stop = asyncio.Event()
        _install_signal_stop(stop)
        store = connect(url, ns=ns)
        the_id = agent_id or f"{socket.gethostname()}:{os.getpid()}"
        speaker = None
        if bgp == "exabgp":
            speaker = BgpSpeaker(inv.regions[region], store,
                                 BgpSettings(**{k: v for k, v in bgp_given.items() if v is not None}),
                                 Path(bgp_dir or f"/run/gtm/bgp-{region}"), the_id, exabgp_bin=exabgp_bin)
        the_agent = RegionAgent(inv.regions[region], store, settings, agent_id=the_id,
                                peers=tuple(inv.regions.values()), bgp=speaker)
        runner = None
        if metrics_addr is not None:
            from aiohttp import web

            from gtm.agent.metrics import metrics_app

            runner = web.AppRunner(metrics_app(the_agent), access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, *metrics_addr).start()
            except OSError as exc:
                await runner.cleanup()
                await store.aclose()
                raise StartupError(f"cannot listen for metrics on {metrics_listen}: {exc.strerror or exc}") from exc
            log.info("agent: metrics on http://%s/metrics", metrics_listen)
        try:
            await the_agent.run(stop)
        finally:
            if runner is not None:
                await runner.cleanup()
            await store.aclose()

    try:
        asyncio.run(go())
    except StartupError as exc:
        err_console.print(f"[red]StartupError[/]: {escape(str(exc))} (use another HOST:PORT, or 'off')")
        raise typer.Exit(1) from None
    except TaskCrashedError as exc:  # logged with its traceback when it happened
        err_console.print(f"[red]TaskCrashedError[/]: {escape(str(exc))}; agent stopped")
        raise typer.Exit(1) from None


@app.command()
def controller(
    ctx: typer.Context,
    redis: str | None = RedisOpt,
    ns: str = NsOpt,
    policies: str = PoliciesOpt,
    regions: str = RegionsOpt,
    policies_git: str | None = PoliciesGitOpt,
    policies_path: str = PoliciesPathOpt,
    git_regions_path: str | None = GitRegionsPathOpt,
    git_refresh: float = typer.Option(30.0, "--git-refresh", help="Seconds between fetches / ref checks."),
    dns_listen: str = typer.Option(
        "127.0.0.1:5353", "--dns-listen",
        help="Embedded authoritative DNS address host:port (UDP and TCP); 'off' to disable.",
    ),
    geoip_db: str = typer.Option(
        "default", "--geoip-db", envvar="GTM_GEOIP_DB",
        help="GeoIP table (MaxMind DB .mmdb: GeoLite2-Country, DB-IP Lite...) locating DNS clients that no "
        "client_networks entry covers; reloaded when the file changes. 'default': the bundled table "
        "(python-geoacumen); 'off': only client_networks.",
    ),
    tick: float = typer.Option(0.5, min=0.05, max=60, help="Seconds between cycles when no event arrives."),
    provider_resync: float = typer.Option(
        0.0, min=0.0,
        help="Re-publish unchanged routing to the policy's DNS providers every N seconds to repair drift "
        "(costs API calls); 0 = only on change.",
    ),
    api_listen: str = typer.Option(
        "127.0.0.1:9180", "--api-listen",
        help="HTTP API host:port (status, /metrics, drain with a bearer token from GTM_API_TOKEN "
        "or GTM_API_TOKEN_FILE); 'off' to disable.",
    ),
    log_level: str = typer.Option("INFO", envvar="GTM_LOG_LEVEL"),
    log_format: LogFormat = LogFormatOpt,
) -> None:
    """Run the controller: plan from Redis inputs and publish to the embedded DNS.

    Several replicas may run: one leader plans and writes (fencing token), the others serve
    DNS from the leader's desired state. A policy file that stops validating is rejected and
    the last good policy stays in force. A controller that starts while its policy does not
    validate starts from the policy the leader last ran (kept in Redis) if there is one, and
    says so; otherwise it exits 2. Stop with SIGTERM.
    """
    from gtm.controller.loop import Controller, ControllerSettings, file_config_loader
    from gtm.providers.embedded_dns import EmbeddedDnsServer, unlocated_segments
    from gtm.providers.geo import PrefixTable
    from gtm.providers.geoip import GeoIpTable
    from gtm.store import connect

    setup_logging(log_level, json_lines=log_format == LogFormat.json)
    loader: Callable[[], Config] = file_config_loader(policies, regions)
    if policies_git:
        from gtm.config.git import GitPolicySource, parse_git_spec

        given = ctx.get_parameter_source("policies")
        if given is not None and given.name == "COMMANDLINE":
            err_console.print("[red]UsageError[/]: --policies and --policies-git are mutually exclusive")
            raise typer.Exit(2)
        try:
            spec = parse_git_spec(policies_git)
            loader = GitPolicySource(spec.repo, spec.ref, policies_path=policies_path, regions_path=git_regions_path,
                                     regions_dir=regions, refresh_s=git_refresh)
        except ConfigError as exc:
            fail(exc, False, 2)
    url = store_url(redis)
    seeded = False
    try:
        cfg = loader()
    except ConfigError as exc:
        snap = policy_snapshot(url, ns)
        if snap is None:
            fail(exc, False, 2)
        cfg, written_at = snap
        seeded = True
        age = time.time() - written_at
        err_console.print(
            f"[bold red]POLICY REJECTED[/]: {escape(str(exc))}\n[yellow]starting from the policy the leader last "
            f"ran[/] (snapshot in Redis, digest {cfg.digest[:19]}"
            + (f", commit {cfg.commit[:12]}" if cfg.commit else "") + f", written {age:.0f}s ago); "
            "the files are retried every cycle and take over once they validate.",
            highlight=False,
        )
    from gtm.providers.registry import build_providers

    try:
        providers = build_providers(cfg.policy)
    except ConfigError as exc:
        fail(exc, False, 2)
    dns_addr = _hostport(dns_listen, "--dns-listen") if dns_listen != "off" else None
    geoip = None
    if dns_addr is not None and geoip_db != "off":
        try:
            geoip = GeoIpTable.default() if geoip_db == "default" else GeoIpTable(geoip_db)
        except ConfigError as exc:
            fail(exc, False, 2)
    api_addr = _hostport(api_listen, "--api-listen") if api_listen != "off" else None
    token = None
    if api_addr is not None:
        from gtm.api.app import api_token_from_env

        try:
            token = api_token_from_env()
        except ConfigError as exc:
            fail(exc, False, 2)

    async def go() -> None:
        stop = asyncio.Event()
        _install_signal_stop(stop)
        store = connect(url, ns=ns)
        publishers = []
        dns = None
        if dns_addr is not None:
            dns = EmbeddedDnsServer(cfg.policy.zones, PrefixTable.from_regions(cfg.inventory.regions.values()),
                                    geoip=geoip, unlocated=unlocated_segments(cfg.policy.services))
            try:
                await dns.start(*dns_addr)
            except OSError as exc:
                raise StartupError(f"cannot listen for DNS on {dns_listen}: {exc.strerror or exc}") from exc
            publishers.append(dns)
            log.info("controller: embedded DNS on %s (UDP and TCP), GeoIP table %s", dns_listen,
                     "off" if geoip is None else f"{geoip.path} ({geoip.database_type})")
        log.info("controller: redis %s, namespace %s, policy %s", redact(url), ns, cfg.digest[:19])
        if cfg.commit:
            log.info("controller: policies from %s at commit %s", policies_git, cfg.commit)
        from gtm.controller.rollout import RolloutDriver

        ctl = Controller(store, loader, publishers, ControllerSettings(tick_s=tick), providers=providers,
                         provider_resync_s=provider_resync, caps_provider=RolloutDriver(store),
                         provider_factory=build_providers)
        if seeded:
            ctl.seed_config(cfg)
        for p in providers:
            log.info("controller: provider %s (%s) for zones %s", p.name, type(p).__name__, ", ".join(p.zones))
        runner = None
        if api_addr is not None:
            from aiohttp import web

            from gtm.api.app import build_app

            api = build_app(store, lambda: ctl.config or cfg, ctl, token)
            runner = web.AppRunner(api, access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, *api_addr).start()
            except OSError as exc:
                await runner.cleanup()
                if dns is not None:
                    await dns.stop()
                raise StartupError(f"cannot listen for the HTTP API on {api_listen}: {exc.strerror or exc}") from exc
            log.info("controller: HTTP API on %s (state-changing calls %s)", api_listen,
                     "need a bearer token" if token else "disabled: no GTM_API_TOKEN")
        try:
            await ctl.run(stop)
        finally:
            if runner is not None:
                await runner.cleanup()
            if dns is not None:
                await dns.stop()
            await store.aclose()

    try:
        asyncio.run(go())
    except StartupError as exc:
        err_console.print(f"[red]StartupError[/]: {escape(str(exc))} (use another HOST:PORT, or 'off')")
        raise typer.Exit(1) from None
    except TaskCrashedError as exc:  # logged with its traceback when it happened
        err_console.print(f"[red]TaskCrashedError[/]: {escape(str(exc))}; controller stopped")
        raise typer.Exit(1) from None


@app.command()
def sim(
    kind: str = typer.Option("vllm", help="Engine to simulate: vllm, tgi, sglang."),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(18001),
    model: str = typer.Option("llama-3.1-8b"),
) -> None:
    """Run a simulated fleet serving real metric samples (for drills, demos and tests)."""
    argv = [sys.executable, "-m", "gtm.sim", "--kind", kind, "--host", host, "--port", str(port), "--model", model]
    os.execvp(sys.executable, argv)


@app.command()
def audit(
    count: int = typer.Option(20, min=1, max=10_000, help="How many entries, newest first."),
    redis: str | None = RedisOpt,
    ns: str = NsOpt,
    output: Output = OutputOpt,
    debug: bool = DebugOpt,
) -> None:
    """Show the newest audit entries: what changed, why, policy digest, fencing token."""
    from gtm.store import connect

    async def go() -> list[tuple[str, dict[str, str]]]:
        store = connect(store_url(redis), ns=ns)
        try:
            return await store.read_audit(count)
        finally:
            await store.aclose()

    rows = run(go, debug)
    decoded = [{"id": i, **{k: _maybe_json(v) for k, v in f.items()}} for i, f in rows]
    if output is Output.json:
        print_json(decoded)
        return
    for e in decoded:
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(e.get("ts", 0))))
        if "action" in e:  # operator actions and rejections
            who = f" by {e['actor']}" if e.get("actor") else ""
            where = f" {e['region']}" if e.get("region") else ""
            text = escape(f"{e['action']}{where}{who}: {e.get('reason', '')}")
            console.print(f"[bold]{ts}[/] {text}", highlight=False)
            for h in e.get("overridden_safety") or []:
                console.print(f"  overrode: {h}", highlight=False, markup=False)
            continue
        if "rollout" in e:  # a rollout step taken by the controller
            console.print(f"[bold]{ts}[/] " + escape(f"rollout {e['rollout']} step {e.get('step')} "
                                                     f"(fencing token {e.get('fencing_token')})"), highlight=False)
            for d in e.get("decisions", []):
                console.print(f"  {d['subject']}: {d['action']} — {d['reason']}", highlight=False, markup=False)
            continue
        extra = []
        if e.get("policy_commit"):
            extra.append(f"commit {str(e['policy_commit'])[:12]}")
        if e.get("policy_digest"):
            extra.append(f"policy {str(e['policy_digest'])[:19]}")
        if e.get("held") is True:
            extra.append("HELD")
        console.print(f"[bold]{ts}[/] generation {e.get('generation')} (fencing token {e.get('fencing_token')}"
                      + (", " + ", ".join(extra) if extra else "") + ")", highlight=False)
        for d in e.get("decisions", []):
            console.print(f"  {d['subject']}: {d['action']} — {d['reason']}", highlight=False, markup=False)


def _maybe_json(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


@app.command()
def demo(
    fast: bool = typer.Option(False, "--fast", help="Shorter waits (for CI)."),
    queries: int = typer.Option(200, help="DNS queries per client subnet per step."),
    output: Output = OutputOpt,
) -> None:
    """Run the zero-setup demo: four regions, simulated fleets, agents, controller, DNS.

    Uses an embedded store (no Redis needed) and real DNS queries to the embedded server.
    Scenario: steady state → a fleet fails → failover → recovery → drain an EU region →
    undrain → a drain drill under client load (its verdict and report files). Prints a
    timeline of answer shares per region. Exits 0 within about 90 s.
    """
    from gtm.demo import run_demo

    setup_logging("ERROR")
    ok = asyncio.run(run_demo(console, queries=queries, fast=fast, json_out=output is Output.json))
    raise typer.Exit(0 if ok else 1)


def main() -> None:
    """Entry point of the ``gtm`` console script."""
    app()


if __name__ == "__main__":
    main()
