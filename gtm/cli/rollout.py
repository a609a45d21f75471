"""``gtm rollout``: start, watch and steer staggered model-version rollouts.

Registered in ``gtm.cli.main`` with ``app.add_typer(rollout_app, name="rollout")``.

The controller does the work (``gtm.controller.rollout``); these commands only write the
operator's intent into the rollout's state in Redis (compare-and-set) and read it back.

Exit codes as for every ``gtm`` command (0 ok, 1 error, 2 usage or invalid policy, 3 refused:
unknown rollout, wrong status, region not in the rollout); ``wait-ready`` exits 4 when its
``--timeout`` passes first.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from gtm.cli.options import ActorOpt, DebugOpt, NsOpt, Output, PoliciesOpt, RedisOpt, RegionsOpt
from gtm.cli.options import OutputOpt as JsonOpt
from gtm.config.loader import Config, load_config
from gtm.config.settings import Settings
from gtm.errors import ConfigError, GtmError, RefusedError
from gtm.log import get_logger

T = TypeVar("T")

rollout_app = typer.Typer(
    help=(
        "Staggered model-version rollouts: wave by wave, per region drain (optional) → deploy "
        "observed → canary → bake → gates → ramp; automatic rollback when a gate fails."
    ),
    no_args_is_help=True,
)

console = Console(soft_wrap=True, highlight=False)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)

EXIT_REFUSED = 3
EXIT_TIMEOUT = 4

log = get_logger("cli.rollout")
ReasonOpt = typer.Option("", "--reason", "-r", help="Why (shown in status and audit).")


def _run(fn: Callable[[], Awaitable[T]], debug: bool) -> T:
    try:
        return asyncio.run(fn())  # type: ignore[arg-type]
    except RefusedError as exc:
        if debug:
            raise
        err_console.print(f"[red]RefusedError[/]: {escape(str(exc))}")
        raise typer.Exit(EXIT_REFUSED) from None
    except ConfigError as exc:  # a bad Redis URL or password file: usage, as in `gtm`
        if debug:
            raise
        err_console.print(f"[red]ConfigError[/]: {escape(str(exc))}")
        raise typer.Exit(2) from None
    except GtmError as exc:
        if debug:
            raise
        err_console.print(f"[red]{type(exc).__name__}[/]: {escape(str(exc))}")
        raise typer.Exit(1) from None


def _config(policies: str, regions: str) -> Config:
    try:
        return load_config(policies, regions)
    except ConfigError as exc:
        err_console.print(f"[red]ConfigError[/]: {escape(str(exc))}")
        raise typer.Exit(2) from None


def _connect(redis: str | None, ns: str) -> Any:
    """A store for ``--redis`` / ``GTM_REDIS_URL``. Raises ``ConfigError`` (exit 2) for a bad
    URL or an unreadable ``GTM_REDIS_PASSWORD_FILE``."""
    from gtm.store import connect

    try:
        url = Settings().resolved_redis_url(redis)
    except OSError as exc:
        raise ConfigError([f"cannot read GTM_REDIS_PASSWORD_FILE: {exc.strerror or exc}"]) from exc
    return connect(url, ns=ns)


async def _audit(store: Any, action: str, name: str, actor: str, reason: str, region: str | None = None) -> None:
    """Record an operator's rollout command in the audit stream (``gtm audit``). The rollout's
    own history already holds it: a failure here is logged, not raised."""
    from gtm.errors import StoreError
    from gtm.models.audit import AuditEntry

    entry = AuditEntry(ts=time.time(), action=f"rollout {action} {name}", actor=actor, reason=reason, region=region,
                       rollout=name, via="cli")
    try:
        await store.append_audit(entry)
    except StoreError as exc:
        log.warning("rollout %s %s: not written to the audit stream: %s", action, name, exc)


def _json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


# -- start / pause / resume / abort -------------------------------------------------------------


@rollout_app.command()
def start(
    name: str = typer.Argument(..., help="Rollout name, as in the policy's rollouts."),
    reason: str = ReasonOpt,
    actor: str = ActorOpt,
    redis: str | None = RedisOpt,
    ns: str = NsOpt,
    policies: str = PoliciesOpt,
    regions: str = RegionsOpt,
    output: Output = JsonOpt,
    debug: bool = DebugOpt,
) -> None:
    """Start rollout NAME from the policy. The controller begins wave 1 on its next cycle.

    Refused (exit 3) if NAME is not in the policy, is already active, another rollout of
    the same service is active, or every region of its waves already serves only the target
    version (nothing to roll out, and a canary would have no baseline to be judged against).
    A finished (done or aborted) rollout may be started again.
    """
    from gtm.controller.rollout import load, update
    from gtm.engine import rollout as machine
    from gtm.engine.rollout import already_deployed

    cfg = _config(policies, regions)
    spec = next((r for r in cfg.policy.rollouts if r.name == name), None)
    if spec is None:
        known = ", ".join(r.name for r in cfg.policy.rollouts) or "none"
        err_console.print(f"[red]RefusedError[/]: no rollout {name!r} in the policy; known: {escape(known)}")
        raise typer.Exit(EXIT_REFUSED)
    svc = next(s for s in cfg.policy.services if s.name == spec.service)

    async def go() -> machine.RolloutState:
        store = _connect(redis, ns)
        try:
            others = await load(store, [r.name for r in cfg.policy.rollouts if r.service == spec.service])
            busy = [n for n, (st, _) in others.items() if n != name and st.active]
            if busy:
                raise RefusedError(
                    f"rollout {busy[0]} of service {spec.service} is still active; finish or abort it first")

            mine = others.get(name)
            if mine is not None and mine[0].active:
                raise RefusedError(f"rollout {name} is already {mine[0].status} (step {mine[0].step})")
            reports, _bad = await store.get_reports(sorted({r for w in spec.waves for r in w}))
            done = already_deployed(spec, svc.model, reports, time.time(), cfg.policy.health.report_timeout_s)
            if done is not None:
                raise RefusedError(done)

            def change(current: machine.RolloutState | None) -> machine.RolloutState:
                if current is not None and current.active:
                    raise RefusedError(f"rollout {name} is already {current.status} (step {current.step})")
                return machine.start(
                    spec, time.time(), model=svc.model, service_regions=svc.regions, ttl_s=float(svc.ttl),
                    report_timeout_s=cfg.policy.health.report_timeout_s, actor=actor, reason=reason,
                )

            st = await update(store, name, change)
            await _audit(store, "start", name, actor, reason)
            return st
        finally:
            await store.aclose()

    st = _run(go, debug)
    if output == "json":
        _json(machine.summary(st))
        return
    console.print(f"started rollout [bold]{name}[/]: {escape(st.reason)}")
    console.print(f"watch with `gtm rollout status {name}`")


def _operator(
    name: str, action: str, redis: str | None, ns: str, actor: str, reason: str, output: str, debug: bool,
    region: str | None = None,
) -> None:
    """An operator's transition of a stored rollout (pause, resume, abort, release REGION):
    compare-and-set in Redis, then audited. Exit 3 when the machine refuses it."""
    from gtm.controller.rollout import update
    from gtm.engine import rollout as machine

    def fn(st: machine.RolloutState, now: float, *, actor: str, reason: str) -> machine.RolloutState:
        if action == "release":
            assert region is not None
            return machine.release(st, region, now, actor=actor, reason=reason)
        return {"pause": machine.pause, "resume": machine.resume, "abort": machine.abort}[action](
            st, now, actor=actor, reason=reason)

    async def go() -> machine.RolloutState:
        store = _connect(redis, ns)
        try:

            def change(current: machine.RolloutState | None) -> machine.RolloutState:
                if current is None:
                    raise RefusedError(f"no rollout {name!r} was started")
                new = fn(current, time.time(), actor=actor, reason=reason)
                return new.model_copy(update={"updated_at": time.time()})

            st = await update(store, name, change)
            await _audit(store, action, name, actor, reason, region)
            return st
        finally:
            await store.aclose()

    st = _run(go, debug)
    if output == "json":
        _json(machine.summary(st))
    elif region is not None:
        console.print(f"rollout [bold]{name}[/]: released {region}: {escape(st.regions[region].reason)}")
    else:
        console.print(f"rollout [bold]{name}[/] {st.status}: {escape(st.reason)}")


@rollout_app.command()
def pause(
    name: str = typer.Argument(...), reason: str = ReasonOpt, actor: str = ActorOpt,
    redis: str | None = RedisOpt, ns: str = NsOpt, output: Output = JsonOpt, debug: bool = DebugOpt,
) -> None:
    """Freeze a running rollout: caps hold, bake and ramp clocks stop. A canary that breaks an
    absolute gate ceiling is still rolled back. Exit 3 unless running."""
    _operator(name, "pause", redis, ns, actor, reason, output, debug)


@rollout_app.command()
def resume(
    name: str = typer.Argument(...), reason: str = ReasonOpt, actor: str = ActorOpt,
    redis: str | None = RedisOpt, ns: str = NsOpt, output: Output = JsonOpt, debug: bool = DebugOpt,
) -> None:
    """Continue a paused rollout, or retry a halted one (the rolled-back region bakes again with
    fresh samples). Exit 3 unless paused or halted."""
    _operator(name, "resume", redis, ns, actor, reason, output, debug)


@rollout_app.command()
def abort(
    name: str = typer.Argument(...), reason: str = ReasonOpt, actor: str = ActorOpt,
    redis: str | None = RedisOpt, ns: str = NsOpt, output: Output = JsonOpt, debug: bool = DebugOpt,
) -> None:
    """End the rollout. Regions in flight stay routed away until none of their healthy
    replicas serves the target version any more; then normal routing. Exit 3 if already ended."""
    _operator(name, "abort", redis, ns, actor, reason, output, debug)


@rollout_app.command()
def release(
    name: str = typer.Argument(..., help="Rollout name."),
    region: str = typer.Argument(..., help="A region the aborted rollout keeps routed away."),
    reason: str = typer.Option(..., "--reason", "-r", help="Why it may serve again (audited; required)."),
    actor: str = ActorOpt, redis: str | None = RedisOpt, ns: str = NsOpt, output: Output = JsonOpt,
    debug: bool = DebugOpt,
) -> None:
    """Let REGION of an aborted rollout serve again now, although its replicas may still run
    the target version (e.g. the version was fine there, or the capacity is needed).

    Without it, an aborted rollout keeps each region that was in flight at weight 0 until none
    of its healthy replicas serves the target version. The region then ramps back like any
    recovery (paced by the policy's planned_step). Exit 3 if the rollout is not aborted or does
    not hold REGION (the message lists the regions it holds).
    """
    if not reason.strip() or len(reason) > 500:
        err_console.print("[red]UsageError[/]: --reason must be 1-500 characters (it is written to the audit stream)")
        raise typer.Exit(2)
    _operator(name, "release", redis, ns, actor, reason, output, debug, region=region)


# -- status / wait-ready ------------------------------------------------------------------------


@rollout_app.command()
def status(
    name: str | None = typer.Argument(None, help="Rollout name; all of the policy's rollouts if omitted."),
    history: int = typer.Option(12, "--history", help="Steps of history to show (text output)."),
    redis: str | None = RedisOpt,
    ns: str = NsOpt,
    policies: str = PoliciesOpt,
    regions: str = RegionsOpt,
    output: Output = JsonOpt,
    debug: bool = DebugOpt,
) -> None:
    """Show a rollout: status, wave, each region's phase with its reason, gate results, caps,
    and the recorded steps. Exit 3 if NAME was never started."""
    from gtm.controller.rollout import load
    from gtm.engine import rollout as machine

    names = [name] if name else [r.name for r in _config(policies, regions).policy.rollouts]

    async def go() -> dict[str, Any]:
        store = _connect(redis, ns)
        try:
            states = await load(store, names)
        finally:
            await store.aclose()
        if name and name not in states:
            raise RefusedError(f"no rollout {name!r} was started")
        return {n: machine.summary(st) for n, (st, _) in sorted(states.items())}

    data = _run(go, debug)
    if output == "json":
        _json(data[name] if name else data)
        return
    if not data:
        console.print("no rollout started")
    for summary in data.values():
        _render(summary, history)


def _render(s: dict[str, Any], history: int) -> None:
    colour = {"running": "cyan", "paused": "yellow", "halted": "red", "done": "green", "aborted": "magenta"}
    console.print(
        f"[bold]{s['name']}[/] ({escape(s['service'])} → {escape(s['target_version'])}): "
        f"[{colour.get(s['status'], 'white')}]{s['status']}[/], wave {max(s['wave'], 0)}/{len(s['waves'])}, "
        f"step {s['step']}"
    )
    def say(text: str) -> None:
        console.print(text, markup=False)

    say(f"  {s['reason']}")
    for region, r in s["regions"].items():
        cap = s["caps"].get(region)
        cap_txt = f" [cap {cap['fraction']:.0%}]" if cap else ""
        say(f"  {region:<16} {r['phase']:<18}{cap_txt} {r['reason']}")
        if r["gate"] and r["gate"] not in r["reason"]:
            say(f"  {'':<16} gate: {r['gate']}")
        if r["samples"]:
            say(f"  {'':<16} baseline: {r['baseline'] or 'none yet'}")
        for metric, m in r["samples"].items():
            say(
                f"  {'':<16} {metric}: {m['canary']} canary / {m['baseline']} baseline samples, "
                f"median {_num(m['canary_median'])} vs {_num(m['baseline_median'])}"
            )
    for h in s["history"][-history:]:
        who = h["actor"] + (f" #{h['token']}" if h.get("token") is not None else "")
        where = f"{h['region']} → " if h["region"] else ""
        say(f"    {h['step']:>3} {_when(h['at'])} {where}{h['phase']}: {h['reason']} [{who}]")


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


@rollout_app.command("wait-ready")
def wait_ready(
    name: str = typer.Argument(..., help="Rollout name."),
    region: str = typer.Argument(..., help="The region a pipeline step is about to deploy."),
    timeout: float = typer.Option(3600.0, "--timeout", min=0, max=604_800,
                                  help="Give up after this many seconds (exit 4)."),
    poll: float = typer.Option(1.0, "--poll", min=0.05, max=3600, help="Seconds between checks."),
    redis: str | None = RedisOpt,
    ns: str = NsOpt,
    output: Output = JsonOpt,
    debug: bool = DebugOpt,
) -> None:
    """Block until REGION is ready for deploy in rollout NAME (its wave started and, with
    drain_first, its traffic drained for TTL + grace), then exit 0. For a CD pipeline step.

    Exit 3 if the rollout was never started, does not include REGION, or was aborted; exit 4
    on timeout. A halted rollout keeps the wait going (an operator may resume it).
    """
    from gtm.controller.rollout import load

    async def go() -> tuple[bool, str]:
        store = _connect(redis, ns)
        deadline = time.monotonic() + timeout
        try:
            while True:
                states = await load(store, [name])
                if name not in states:
                    raise RefusedError(f"no rollout {name!r} was started")
                st = states[name][0]
                p = st.regions.get(region)
                if p is None:
                    raise RefusedError(f"rollout {name} does not include region {region!r}")
                if st.ready_for_deploy(region):
                    return True, f"{region} ready for deploy of {st.spec.target_version}: {p.phase} ({p.reason})"
                if st.status in ("aborted", "done"):
                    raise RefusedError(f"rollout {name} is {st.status}; {region} is {p.phase}")
                if time.monotonic() >= deadline:
                    why = f"timed out after {timeout:g}s: {region} is {p.phase} ({p.reason}); rollout {st.status}"
                    return False, why
                await asyncio.sleep(min(poll, max(0.01, deadline - time.monotonic())))
        finally:
            await store.aclose()

    ok, why = _run(go, debug)
    if output == "json":
        _json({"rollout": name, "region": region, "ready": ok, "reason": why})
    elif ok:
        console.print(why, markup=False)
    else:
        err_console.print(why, markup=False)
    if not ok:
        raise typer.Exit(EXIT_TIMEOUT)
