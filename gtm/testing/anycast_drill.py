"""The anycast drill: a fleet failure and a drain on the real BGP path, timed at the router.

On loopback (``gtm.testing.anycast.AnycastLab``): a private ``redis-server``, one BIRD 2 and,
per region (2-4), a simulated fleet and a ``gtm agent --bgp exabgp`` process with its own
ExaBGP peering with BIRD. All regions announce ``198.51.100.0/24``. Then:

1. **fleet failure**: the first region's fleet is killed (SIGKILL); its agent withdraws by
   itself (fall 2), no controller involved: seconds until BIRD no longer has its route;
   the fleet is restarted: seconds until the route is back (rise 3).
2. **drain**: the plan withdraws the second region with ``planned=True`` (what ``gtm drain``
   makes the engine write): seconds until BIRD sees the route with GRACEFUL_SHUTDOWN
   (local preference 0: traffic moves), then until it is gone (the hold, ``graceful_s``);
3. **undrain** with a reduced share: seconds until the route is back with one prepend.

The plan is written by the drill (standing in for the controller), so the drill needs no
policy; the seconds are the agent → ExaBGP → BGP → BIRD path. Exits 0 when every step converged.
Run it with ``gtm drill anycast`` (``-o json``) or ``make drill-anycast``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from gtm.testing.anycast import PREFIX, AnycastLab
from gtm.testing.bgp import BirdRoute
from gtm.testing.redis import RedisProcess


def _describe(routes: dict[str, BirdRoute]) -> str:
    return ", ".join(
        f"{r}{'*' if x.best else ''} path {' '.join(map(str, x.as_path))}"
        f"{' GSHUT' if x.graceful_shutdown else ''}" for r, x in sorted(routes.items())
    ) or "(no route)"


async def run_anycast_drill(console: Console, *, regions: int = 3, graceful_s: float = 2.0,
                            json_out: bool = False) -> bool:
    """Run the drill; returns whether every step converged (see the module docstring).

    Args:
        console: where the table goes.
        regions: 2-4 regions.
        graceful_s: how long a drain holds GRACEFUL_SHUTDOWN, seconds.
        json_out: print one JSON document instead of the table.
    """
    steps: list[dict[str, Any]] = []
    ok = True
    started = time.monotonic()

    def say(msg: str) -> None:
        if not json_out:
            console.print(msg, highlight=False, soft_wrap=True)

    with RedisProcess() as redis:
        async with AnycastLab(redis.url, regions=regions, graceful_s=graceful_s) as lab:
            failed, drained = lab.names[0], lab.names[1]

            marks: dict[str, float] = {}

            async def step(name: str, event: str, pred: Any, act: Any, timeout: float = 15.0,
                           since: str | None = None) -> None:
                nonlocal ok
                t0 = time.monotonic()
                marks[name] = t0
                await act()
                t0 = marks[since] if since else t0
                try:
                    await lab.wait_routes(pred, timeout=timeout)
                    took: float | None = time.monotonic() - t0
                except TimeoutError:
                    ok, took = False, None
                routes = await lab.routes()
                steps.append({"step": name, "event": event, "seconds": None if took is None else round(took, 3),
                              "bird": _describe(routes)})
                say(f"{name}: {event}: " + (f"{took:.3f}s" if took is not None else "[red]did not converge[/]")
                    + f"  [dim]{_describe(routes)}[/]")

            async def announce_all() -> None:
                await lab.put_plan({n: {"action": "announce"} for n in lab.names})

            async def kill() -> None:
                lab.kill_fleet(failed)

            async def restart() -> None:
                lab.start_fleet(failed)

            async def drain() -> None:
                await lab.put_plan({n: ({"action": "withdraw", "planned": True, "reason": "drain"} if n == drained
                                        else {"action": "announce"}) for n in lab.names})

            async def undrain() -> None:
                await lab.put_plan({n: ({"action": "announce", "prepend": 1, "reason": "ramping back"}
                                        if n == drained else {"action": "announce"}) for n in lab.names})

            async def nothing() -> None:
                return None

            await step("start", f"{regions} regions announce {PREFIX}",
                       lambda rs: set(rs) == set(lab.names), announce_all)
            await step("fleet failure", f"{failed} fleet killed → route gone at BIRD",
                       lambda rs: failed not in rs, kill, timeout=5)
            await step("fleet back", f"{failed} fleet restarted → route back (rise)",
                       lambda rs: failed in rs, restart)
            await step("drain", f"{drained} drained → GRACEFUL_SHUTDOWN at BIRD",
                       lambda rs: drained in rs and rs[drained].graceful_shutdown, drain, timeout=5)
            await step("drain done", f"{drained} drained → route gone at BIRD (after the {graceful_s:g}s hold)",
                       lambda rs: drained not in rs, nothing, timeout=graceful_s + 5, since="drain")
            await step("undrain", f"{drained} undrained → back with 1 prepend",
                       lambda rs: drained in rs and rs[drained].prepend_count == 1, undrain)
    elapsed = round(time.monotonic() - started, 1)
    if json_out:
        console.print_json(json.dumps({"ok": ok, "elapsed_s": elapsed, "prefix": PREFIX, "steps": steps}))
        return ok
    t = Table(box=box.SIMPLE, title=f"anycast drill: {PREFIX}, {regions} regions, BIRD 2 + ExaBGP on loopback")
    for col in ("step", "event", "seconds"):
        t.add_column(col)
    for s in steps:
        t.add_row(s["step"], s["event"], "-" if s["seconds"] is None else f"{s['seconds']:.3f}")
    console.print(t)
    console.print(f"[green]anycast drill OK[/] in {elapsed}s" if ok else f"[red]anycast drill FAILED[/] ({elapsed}s)")
    return ok
