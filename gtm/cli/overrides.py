"""Operator overrides from the command line: ``gtm drain`` / ``undrain`` (drains and cordons,
with the safety projection) and ``gtm undamp`` (lift a flap-damping penalty). Registered on
the ``gtm`` app by ``gtm.cli.main``."""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.markup import escape

from gtm.cli.common import (
    EXIT_REFUSED,
    EXIT_USAGE,
    config_or_warn,
    console,
    err_console,
    fail,
    print_json,
    run,
    store_url,
)
from gtm.cli.options import ActorOpt, DebugOpt, NsOpt, Output, OutputOpt, PoliciesOpt, RedisOpt, RegionsOpt
from gtm.config.loader import Config
from gtm.errors import RefusedError, UsageError


def drain(
    region: str = typer.Argument(..., help="Region to drain, e.g. eu-west-1."),
    reason: str = typer.Option(..., "--reason", "-r", help="Why (shown in status and audit). Required."),
    actor: str = ActorOpt,
    cordon: bool = typer.Option(False, "--cordon", help="Cordon instead: keep current weight, never raise it."),
    expires_in: float | None = typer.Option(
        None, "--expires-in", min=1, max=31_536_000,
        help="Lift the override by itself after this many seconds (1 s to 1 year)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Drain even when safety rules (headroom, min healthy, max drained) hold it; audited."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would change; write nothing."),
    redis: str | None = RedisOpt,
    ns: str = NsOpt,
    policies: str = PoliciesOpt,
    regions: str = RegionsOpt,
    output: Output = OutputOpt,
    debug: bool = DebugOpt,
) -> None:
    """Drain a region: step its weight down to 0 (planned steps), and hold it there.

    First plays the drain forward with the current reports and shows where the traffic goes
    and the load the other regions would take. If the safety rules would hold it (capacity
    headroom, min_healthy_regions, max_drained) it refuses with the numbers and exits 3,
    unless --force (written to the audit stream). Undo with `gtm undrain REGION`.
    Exit 3 also for an unknown region.
    """
    from gtm.controller import actions
    from gtm.store import connect

    cfg = config_or_warn(policies, regions)
    try:
        order = actions.DrainOrder.parse({"region": region, "kind": "cordon" if cordon else "drain",
                                          "reason": reason, "actor": actor, "expires_in": expires_in,
                                          "force": force}, via="cli")
    except UsageError as exc:
        fail(exc, debug, EXIT_USAGE)

    async def go() -> actions.DrainOutcome:
        store = connect(store_url(redis), ns=ns)
        try:
            return await actions.drain(store, cfg, order, via="cli", dry_run=dry_run)
        finally:
            await store.aclose()

    outcome = run(go, debug)
    data = outcome.to_dict()
    if output is Output.json:
        print_json(data)
    elif cfg is not None:
        _print_drain(data, region, reason, actor, cordon, dry_run, cfg)
    else:
        console.print(f"{'would write' if dry_run else 'wrote'} {order.kind} of [bold]{escape(region)}[/] "
                      f"({escape(reason)}) by {escape(actor)}; "
                      "no projection (local policy files invalid): the controller still applies its safety rules")
    if outcome.refused:
        raise typer.Exit(EXIT_REFUSED)


def _print_drain(
    data: dict[str, Any], region: str, reason: str, actor: str, cordon: bool, dry_run: bool, cfg: Config
) -> None:
    kind = "cordon" if cordon else "drain"
    if data.get("replaces"):
        old = data["replaces"]
        console.print(f"note: replaces the {old['kind']} by {old['actor']} ({old['reason']})",
                      highlight=False, markup=False)
    if data["refused"]:
        err_console.print(f"[red]RefusedError[/]: {kind} of {escape(region)} would be held by the safety rules:")
        for h in data["held_by_safety"]:
            err_console.print(f"  - {h}", highlight=False, markup=False)
        err_console.print("nothing written; use --force --reason '...' to drain anyway (audited)")
    elif dry_run:
        console.print(f"would {kind} [bold]{escape(region)}[/] ({escape(reason)}) by {escape(actor)}")
    else:
        until = ""
        if data["override"].get("expires_at"):
            until = f"; lifted by itself at {time.strftime('%H:%M:%S', time.localtime(data['override']['expires_at']))}"
        console.print((f"{kind}ed [bold]{escape(region)}[/] ({escape(reason)}) by {escape(actor)}" if cordon else
                       f"drained [bold]{escape(region)}[/] ({escape(reason)}) by {escape(actor)}") + until)
        if data["held_by_safety"]:
            console.print("[yellow]--force: safety rules overridden (audited):[/]")
            for h in data["held_by_safety"]:
                console.print(f"  - {h}", highlight=False, markup=False)
    for pool, shares in data["projected_shares"].items():
        txt = ", ".join(f"{r} {s:.0%}" for r, s in shares.items()) or "DARK"
        console.print(f"  projected {pool}: {txt}", highlight=False, markup=False)
    unit = data["capacity_unit"]
    for r, v in data["projected_load"].items():
        console.print(
            f"  {r}: load {v['load']:.2f} {unit}, spare {v['spare']:.2f} → takes +{v['extra']:.2f}, "
            f"spare after {v['spare_after']:.2f}", highlight=False, markup=False,
        )
    if data["written"] and not cordon:
        rules = cfg.policy.safety
        console.print(
            f"the controller steps the weight down by {rules.planned_step} every {rules.step_interval_s:g}s; "
            f"watch with `gtm status`"
        )


def undrain(
    region: str = typer.Argument(..., help="Region to return to service."),
    reason: str = typer.Option("", "--reason", "-r", help="Why (written to the audit stream)."),
    actor: str = ActorOpt,
    redis: str | None = RedisOpt,
    ns: str = NsOpt,
    output: Output = OutputOpt,
    debug: bool = DebugOpt,
) -> None:
    """Lift a drain or cordon: the weight ramps back up in planned steps. Audited.

    Exit 3 if the region had no override.
    """
    from gtm.controller import actions
    from gtm.store import connect

    async def go() -> actions.UndrainOutcome:
        store = connect(store_url(redis), ns=ns)
        try:
            return await actions.undrain(store, None, region, actor=actor, reason=reason, via="cli")
        finally:
            await store.aclose()

    outcome = run(go, debug)
    if output is Output.json:
        print_json({"region": region, "removed": outcome.removed,
                    "lifted": outcome.lifted.model_dump() if outcome.lifted is not None else None})
    elif outcome.removed:
        console.print(f"undrained [bold]{escape(region)}[/]: weight ramps back up in planned steps")
    else:
        err_console.print(f"{region} had no drain or cordon", markup=False)
    if not outcome.removed:
        raise typer.Exit(EXIT_REFUSED)


def undamp(
    region: str = typer.Argument(..., help="Region whose flap damping to clear."),
    reason: str = typer.Option(..., "--reason", "-r", help="Why (e.g. the fix that stops it flapping). Required."),
    actor: str = ActorOpt,
    redis: str | None = RedisOpt,
    ns: str = NsOpt,
    output: Output = OutputOpt,
    debug: bool = DebugOpt,
) -> None:
    """Clear a region's flap damping before its penalty runs out.

    A region that went in and out of service `flap_threshold` times within `flap_window_s`
    stays out for `flap_penalty_s` (shown as DAMPED in `gtm status`). Once the cause is fixed,
    this lets it back at once: its past transitions stop counting, and if it is healthy its
    weight ramps up in planned steps. Written to the audit stream. Exit 3 if the controller's
    current plan does not show REGION damped (nothing is written).
    """
    from gtm.controller import actions
    from gtm.store import connect

    async def go() -> actions.UndampOutcome:
        store = connect(store_url(redis), ns=ns)
        try:
            return await actions.undamp(store, region, actor=actor, reason=reason, via="cli")
        finally:
            await store.aclose()

    def refused_json(exc: RefusedError) -> None:
        print_json({"region": region, "cleared": False, "error": str(exc)})

    done = run(go, debug, on_refused=refused_json if output is Output.json else None)
    if output is Output.json:
        print_json({"region": region, "cleared": True, "at": done.at, "was_damped_until": done.was_damped_until,
                    "remaining_s": done.remaining_s, "state": done.state})
        return
    console.print(
        f"cleared flap damping of [bold]{escape(region)}[/] ({done.remaining_s:.0f}s of penalty left) "
        f"by {escape(actor)}; "
        f"it is {done.state}: a healthy region ramps back in planned steps; watch with `gtm status`"
    )
