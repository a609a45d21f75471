"""Operator overrides from the command line: ``gtm drain`` / ``undrain`` (drains and cordons,
with the safety projection) and ``gtm undamp`` (lift a flap-damping penalty). Registered on
the ``gtm`` app by ``gtm.cli.main``."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import typer
from rich.markup import escape

from gtm.cli.common import config_or_warn, console, err_console, print_json, run, store_url
from gtm.cli.options import ActorOpt, DebugOpt, NsOpt, Output, OutputOpt, PoliciesOpt, RedisOpt, RegionsOpt
from gtm.config.loader import Config
from gtm.errors import StoreError


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
    from gtm.controller.drain import project_drain
    from gtm.models.override import Override
    from gtm.store import connect

    cfg = config_or_warn(policies, regions)
    if cfg is not None and region not in cfg.inventory.regions:
        known = ", ".join(sorted(cfg.inventory.regions))
        err_console.print(f"[red]RefusedError[/]: unknown region {escape(repr(region))}; known: {known}")
        raise typer.Exit(3)
    if not reason.strip() or len(reason) > 500:
        err_console.print("[red]UsageError[/]: --reason must be 1-500 characters (it is shown in status and audit)")
        raise typer.Exit(2)
    now = time.time()
    ov = Override(
        region=region, kind="cordon" if cordon else "drain", reason=reason, actor=actor,
        since=now, expires_at=now + expires_in if expires_in else None, force=force,
    )

    async def go() -> dict[str, Any]:
        store = connect(store_url(redis), ns=ns)
        try:
            overrides = await store.get_overrides()
            replaced = overrides.get(region)
            previous = await store.get_desired()
            if cfg is None:
                return await _drain_without_config(store, ov, previous, replaced, dry_run)
            names = sorted(cfg.policy.region_names & cfg.inventory.regions.keys())
            reports, _ = await store.get_reports(names)
            from gtm.controller.rollout import current_caps

            caps = await current_caps(store, cfg.policy)
            cleared = await store.get_damping_cleared()
            proj = project_drain(cfg, reports, overrides, previous, ov.model_copy(update={"force": False}), now,
                                 caps=caps, damping_cleared=cleared)
            refused = bool(proj.held) and not force
            written = not dry_run and not refused
            if written:
                await store.put_override(ov)
                await store.append_audit({
                    "ts": now, "action": ov.kind + (" --force" if force else ""), "region": region,
                    "actor": actor, "reason": reason, "expires_at": ov.expires_at,
                    **({"overridden_safety": proj.held} if force else {}),
                })
            return {
                "override": ov.model_dump(), "written": written, "refused": refused,
                "held_by_safety": proj.held, "projected_shares": proj.shares,
                "projected_load": proj.loads, "capacity_unit": proj.unit, "steps": proj.steps,
                "replaces": replaced.model_dump() if replaced is not None else None,
            }
        finally:
            await store.aclose()

    data = run(go, debug)
    if output is Output.json:
        print_json(data)
    elif cfg is not None:
        _print_drain(data, region, reason, actor, cordon, dry_run, cfg)
    elif data["refused"]:
        err_console.print(f"[red]RefusedError[/]: {escape(data['error'])}")
    else:
        console.print(f"{'would write' if dry_run else 'wrote'} {ov.kind} of [bold]{escape(region)}[/] "
                      f"({escape(reason)}) by {escape(actor)}; "
                      "no projection (local policy files invalid): the controller still applies its safety rules")
    if data["refused"]:
        raise typer.Exit(3)


async def _drain_without_config(
    store: Any, ov: Any, previous: Any, replaced: Any, dry_run: bool
) -> dict[str, Any]:
    """Drain when the local files do not validate: check the region against what the controller
    plans (Redis), write the override, and leave the safety rules to the controller."""
    known = sorted(previous.regions) if previous is not None else []
    if ov.region not in known:
        return {"refused": True, "written": False,
                "error": f"unknown region {ov.region!r}; the controller plans {', '.join(known) or 'nothing yet'}"}
    if not dry_run:
        await store.put_override(ov)
        await store.append_audit({"ts": ov.since, "action": ov.kind + (" --force" if ov.force else ""),
                                  "region": ov.region, "actor": ov.actor, "reason": ov.reason,
                                  "expires_at": ov.expires_at, "note": "local policy files invalid: no projection"})
    return {
        "override": ov.model_dump(), "written": not dry_run, "refused": False, "held_by_safety": [],
        "projected_shares": {}, "projected_load": {}, "capacity_unit": "", "steps": 0,
        "replaces": replaced.model_dump() if replaced is not None else None,
        "warning": "local policy files invalid: no projection; the controller applies its safety rules",
    }


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
    from gtm.store import connect

    if len(reason) > 500:
        err_console.print("[red]UsageError[/]: --reason must be at most 500 characters")
        raise typer.Exit(2)

    async def go() -> dict[str, Any] | None:
        store = connect(store_url(redis), ns=ns)
        try:
            lifted = (await store.get_overrides()).get(region)
            if not await store.delete_override(region):
                return None
            entry = {"ts": time.time(), "action": "undrain", "region": region, "actor": actor, "reason": reason,
                     "lifted": lifted.model_dump() if lifted is not None else None}
            with contextlib.suppress(StoreError):
                await store.append_audit(entry)
            return entry
        finally:
            await store.aclose()

    lifted = run(go, debug)
    existed = lifted is not None
    if output is Output.json:
        print_json({"region": region, "removed": existed, "lifted": (lifted or {}).get("lifted")})
    elif existed:
        console.print(f"undrained [bold]{escape(region)}[/]: weight ramps back up in planned steps")
    else:
        err_console.print(f"{region} had no drain or cordon", markup=False)
    if not existed:
        raise typer.Exit(3)


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
    from gtm.store import connect

    if not reason.strip() or len(reason) > 500:
        err_console.print("[red]UsageError[/]: --reason must be 1-500 characters (it is written to the audit stream)")
        raise typer.Exit(2)

    async def go() -> dict[str, Any]:
        store = connect(store_url(redis), ns=ns)
        try:
            now = time.time()
            state = await store.get_desired()
            status = state.regions.get(region) if state is not None else None
            if status is None:
                known = ", ".join(sorted(state.regions)) if state is not None else "nothing yet"
                return {"region": region, "cleared": False,
                        "error": f"unknown region {region!r}; the controller plans {known}"}
            if status.damped_until <= now:
                return {"region": region, "cleared": False, "error": f"{region} is not damped"}
            await store.clear_damping(region, now, actor, reason)
            await store.append_audit({"ts": now, "action": "undamp", "region": region, "actor": actor,
                                      "reason": reason, "damped_until": status.damped_until})
            return {"region": region, "cleared": True, "at": now, "was_damped_until": status.damped_until,
                    "remaining_s": status.damped_until - now, "state": status.state}
        finally:
            await store.aclose()

    data = run(go, debug)
    if output is Output.json:
        print_json(data)
    elif data["cleared"]:
        console.print(
            f"cleared flap damping of [bold]{escape(region)}[/] ({data['remaining_s']:.0f}s of penalty left) "
            f"by {escape(actor)}; "
            f"it is {data['state']}: a healthy region ramps back in planned steps; watch with `gtm status`"
        )
    else:
        err_console.print(f"[red]RefusedError[/]: {escape(data['error'])}")
    if not data["cleared"]:
        raise typer.Exit(3)

