"""Anycast end to end: agents (``gtm agent --bgp exabgp``, separate processes) drive their own
ExaBGP 5, which peers with a real BIRD 2 on loopback; BIRD's table is read with ``birdc``.

The plan is written to Redis by the lab (standing in for the controller), the fleets are the
simulator's. Needs ``bird``/``birdc`` (Debian ``bird2``) and ``exabgp`` (the ``test`` extra).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gtm.agent.exabgp import ExaBgpApi, ExaBgpProcess, Route, announce_command, withdraw_command
from gtm.models.region import BgpSide
from gtm.store.store import connect
from gtm.testing.anycast import PREFIX, AnycastLab
from gtm.testing.bgp import Bird, BirdRoute, bgp_region
from gtm.testing.redis import RedisProcess
from tests.factories import skip_or_fail

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _needs_bird_and_exabgp() -> None:
    """Skipped only on a bare developer run without BIRD 2 or ExaBGP; under ``make test`` and
    in CI a missing one is a failure (``make services`` installs bird2, the test extra exabgp)."""
    if ((shutil.which("bird") is None and not Path("/usr/sbin/bird").exists())
            or not (Path(sys.executable).parent / "exabgp").exists()):
        skip_or_fail("needs bird2 and exabgp (make services; the test extra)")

R = "us-east-1"  # the lab's first region: AS 65001
OTHER = "us-west-2"


def _announced(region: str, **want: Any) -> Any:
    def pred(routes: dict[str, BirdRoute]) -> bool:
        r = routes.get(region)
        return r is not None and all(getattr(r, k) == v for k, v in want.items())
    return pred


def _gone(region: str) -> Any:
    return lambda routes: region not in routes


async def test_drain_goes_through_graceful_shutdown_then_undrain_announces_prepends(redis_url: str) -> None:
    async with AnycastLab(redis_url, regions=2, graceful_s=1.0) as lab:
        await lab.put_plan({R: {"action": "announce"}, OTHER: {"action": "announce", "prepend": 1}})
        await lab.wait_routes(lambda rs: R in rs and OTHER in rs)
        routes = await lab.routes()
        assert routes[R].as_path == (65001,) and routes[R].next_hop == "192.0.2.101"
        assert routes[OTHER].as_path == (65002, 65002) and routes[R].best  # shorter path wins

        # drain R: GRACEFUL_SHUTDOWN first (local preference 0 at BIRD: OTHER becomes best), then withdrawn
        t0 = time.monotonic()
        await lab.put_plan({R: {"action": "withdraw", "planned": True}, OTHER: {"action": "announce"}})
        await lab.wait_routes(_announced(R, graceful_shutdown=True), timeout=5)
        routes = await lab.routes()
        assert routes[R].local_pref == 0 and not routes[R].best and routes[OTHER].best
        await lab.wait_routes(_gone(R), timeout=5)
        assert time.monotonic() - t0 >= 1.0  # GRACEFUL_SHUTDOWN held graceful_s (1 s) before the withdrawal
        assert OTHER in await lab.routes()

        # undrain with a reduced share: announced again with two prepends, no GRACEFUL_SHUTDOWN
        await lab.put_plan({R: {"action": "announce", "prepend": 2, "med": 30}, OTHER: {"action": "announce"}})
        await lab.wait_routes(_announced(R, as_path=(65001, 65001, 65001)))
        r = (await lab.routes())[R]
        assert r.med == 30 and not r.graceful_shutdown and r.local_pref == 100

        # what the agent stored for `gtm status`: sent and acknowledged
        store = connect(redis_url, ns=lab.namespace)
        try:
            for _ in range(100):  # written right after the acknowledgement, by its own task
                st = (await store.get_bgp_states([R]))[R]
                if st.routes[PREFIX].sent_prepend == 2 and st.routes[PREFIX].acked == "done":
                    break
                await asyncio.sleep(0.05)
        finally:
            await store.aclose()
        route = st.routes[PREFIX]
        assert st.connected and st.fleet_up and st.peers["127.0.0.2"].up
        assert (route.plan_action, route.sent_action, route.sent_prepend, route.sent_med) == (
            "announce", "announce", 2, 30)
        assert route.acked == "done" and route.acked_at is not None and st.last_ack_at is not None


async def test_fleet_killed_without_controller_is_withdrawn_by_the_agent_alone(redis_url: str) -> None:
    async with AnycastLab(redis_url, regions=1) as lab:
        await lab.put_plan({R: {"action": "announce"}})
        await lab.wait_routes(_announced(R))
        t0 = time.monotonic()
        lab.kill_fleet(R)  # no controller runs: the plan still says announce
        await lab.wait_routes(_gone(R), timeout=5)
        took = time.monotonic() - t0
        assert took < 2.0, took  # fall 2 checks: about 0.35 s
        assert "own fleet failing" in lab.log(f"agent-{R}")
        await asyncio.sleep(0.5)
        assert R not in await lab.routes()  # stays withdrawn while the fleet is down
        lab.start_fleet(R)  # back: re-announced after rise (3 checks), the plan still says announce
        await lab.wait_routes(_announced(R), timeout=10)


async def test_redis_down_keeps_the_last_plan_but_a_fleet_failure_still_withdraws() -> None:
    with RedisProcess() as redis:
        async with AnycastLab(redis.url, regions=1) as lab:
            await lab.put_plan({R: {"action": "announce"}})
            await lab.wait_routes(_announced(R))
            redis.stop()
            await asyncio.sleep(1.5)  # several plan reads fail meanwhile
            assert R in await lab.routes()  # static stability: the last plan stands
            lab.kill_fleet(R)
            await lab.wait_routes(_gone(R), timeout=5)


async def test_exabgp_restart_restores_exactly_the_desired_state(redis_url: str) -> None:
    withdrawn = "203.0.113.0/24"
    async with AnycastLab(redis_url, regions=1) as lab:
        await lab.put_plan({R: {"action": "announce"}}, more={withdrawn: {R: {"action": "announce"}}})
        await lab.wait_routes(_announced(R), prefix=withdrawn)
        await lab.put_plan({R: {"action": "announce", "prepend": 1}}, more={withdrawn: {R: {"action": "withdraw"}}})
        await lab.wait_routes(_gone(R), prefix=withdrawn)
        await lab.wait_routes(_announced(R, as_path=(65001, 65001)))
        old = lab.exabgp_pid(R)
        os.kill(old, signal.SIGKILL)  # ExaBGP dies; the agent starts it again and re-sends everything
        await lab.wait_routes(_gone(R), timeout=15)  # its session closed with it
        await lab.wait_routes(_announced(R, as_path=(65001, 65001)), timeout=15)
        assert lab.exabgp_pid(R) != old
        for _ in range(20):  # and the withdrawn prefix never comes back
            assert R not in await lab.routes(withdrawn)
            await asyncio.sleep(0.05)


async def test_sigterm_withdraws_before_the_agent_exits(redis_url: str) -> None:
    async with AnycastLab(redis_url, regions=1) as lab:
        await lab.put_plan({R: {"action": "announce"}})
        await lab.wait_routes(_announced(R))
        proc = lab.signal_agent(R, signal.SIGTERM)
        await lab.wait_routes(_gone(R), timeout=10)
        assert await asyncio.to_thread(proc.wait, 15) == 0
        log = lab.log(f"agent-{R}")
        assert f"withdraw route {PREFIX} (agent stopping)" in log
        assert R not in await lab.routes()


async def test_withdraw_then_announce_within_milliseconds_leaves_the_new_route(tmp_path: Path) -> None:
    """The speaker's API session against a real ExaBGP and BIRD: commands are serialised on
    their acknowledgements, so a withdraw and an announce with a new next hop sent back to back
    end with the new route."""
    with Bird(speakers=1) as bird:
        side = BgpSide.model_validate(bgp_region(0, bird.port))
        proc = ExaBgpProcess(side, tmp_path / "bgp")
        api = ExaBgpApi(proc.socket_path)
        stop = asyncio.Event()
        (tmp_path / "bgp").mkdir()
        await api.start()
        runner = asyncio.create_task(proc.run(stop))
        try:
            for _ in range(200):
                if api.connected:
                    break
                await asyncio.sleep(0.05)
            assert await api.send(announce_command(Route(PREFIX, "192.0.2.101")), 5) == "done"
            await bird.wait(PREFIX, lambda rs: [r.next_hop for r in rs] == ["192.0.2.101"], timeout=15)
            t0 = time.monotonic()
            assert await api.send(withdraw_command(PREFIX), 5) == "done"
            assert await api.send(announce_command(Route(PREFIX, "192.0.2.55", med=5)), 5) == "done"
            assert time.monotonic() - t0 < 0.5
            await bird.wait(PREFIX, lambda rs: [(r.next_hop, r.med) for r in rs] == [("192.0.2.55", 5)])
            await asyncio.sleep(0.3)
            assert [r.next_hop for r in await bird.routes(PREFIX)] == ["192.0.2.55"]
            assert await api.send("announce route 198.51.100.0/33 next-hop 192.0.2.1", 5) == "error"
        finally:
            stop.set()
            await runner
            await api.aclose()


async def test_gtm_drain_through_the_engine_goes_graceful_then_withdrawn_and_undrain_returns(
        redis_url: str) -> None:
    """The real controller plans the announcements (static equal weights, default safety rules);
    ``gtm drain`` steps the region down (prepends grow), then withdraws it through
    GRACEFUL_SHUTDOWN; the fleet kill of the other region is withdrawn by its agent too."""
    async with AnycastLab(redis_url, regions=2, graceful_s=1.0, controller=True) as lab:
        await lab.wait_routes(lambda rs: R in rs and OTHER in rs and rs[R].prepend_count == 0
                              and rs[OTHER].prepend_count == 0, timeout=30)
        await lab.drain(R)
        await lab.wait_routes(_announced(R, graceful_shutdown=True), timeout=20)
        r = (await lab.routes())[R]
        assert r.local_pref == 0 and not r.best
        await lab.wait_routes(_gone(R), timeout=10)
        assert OTHER in await lab.routes()
        await lab.wait_dns(lambda s: s == {OTHER}, timeout=10)
        await lab.drain(R, undo=True)
        await lab.wait_routes(_announced(R, graceful_shutdown=False), timeout=20)
        await lab.wait_dns(lambda s: s == {R, OTHER}, timeout=20)
