"""Rollouts end to end, in real time with short settings: four simulated vLLM fleets (real
HTTP servers), their region agents and the controller in-process, state in the real Redis on
GTM_TEST_REDIS_URL (private namespace, keys deleted afterwards).

A "CD pipeline" task deploys each region when the rollout says it is ready for deploy (via
``gtm rollout wait-ready`` run as a separate process in one test), by POSTing the new version
to the region's simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gtm.agent.daemon import AgentSettings, RegionAgent
from gtm.config.loader import Config, policy_digest
from gtm.controller.loop import Controller, ControllerSettings
from gtm.controller.rollout import RolloutDriver, load, update
from gtm.engine import rollout as machine
from gtm.engine.rollout import IN_FLIGHT, RolloutState
from gtm.models.policy import Policy
from gtm.models.region import FleetSource, Inventory
from gtm.models.rollout import GateSpec, RolloutSpec
from gtm.sim import FleetSim, start_fleet
from gtm.store import Store, connect
from tests.factories import FOUR_REGIONS, MODEL, eu_segment, make_policy, make_region, make_service
from tests.support.redis import REDIS_URL

# The controller's loop also answers DNS: a test fails when it was blocked (see conftest.py).
pytestmark = pytest.mark.usefixtures("loop_watchdog")


NAME = "llama-v2"
WAVES = (("eu-west-1",), ("eu-central-1",), ("us-east-1", "us-west-2"))
PHASES = ["draining", "ready-for-deploy", "canary", "ramping 50%", "ramping 100%", "done"]
FAST_AGENT = AgentSettings(
    scrape_interval_s=0.05, scrape_timeout_s=0.5, heartbeat_s=0.1, report_ttl_s=5.0,
    transition_poll_s=0.05, publish_checks=2,
)
SPEC = RolloutSpec(
    name=NAME, service="chat", target_version="v2", waves=WAVES, drain_first=True, drain_grace_s=0.2,
    canary_fraction=0.2, bake_time_s=1.0, ramp_steps=(0.5, 1.0), ramp_interval_s=0.2,
    gates=GateSpec(metrics=("error_rate", "ttft", "itl"), min_samples=8, confidence=0.95, tolerance=0.2,
                   max_error_rate=0.05),
)
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Fleets:
    """The simulated world: fleets, agents, a store, and the controller(s) under test."""

    ns: str
    store: Store
    config: Config
    sims: dict[str, FleetSim]
    http: aiohttp.ClientSession
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    _kill: dict[asyncio.Task[None], asyncio.Event] = field(default_factory=dict)

    async def gtm_rollout(self, *args: str) -> tuple[int, str, str]:
        """``gtm rollout ARGS`` in its own process against this namespace."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from gtm.cli.rollout import rollout_app; rollout_app()",
            *args, "--redis", REDIS_URL, "--ns", self.ns,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        )
        self.procs.append(proc)
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    def controller(self, owner: str) -> Controller:
        return Controller(
            # A 3 s lease, as in production: a loaded CI runner can stall a cycle past 1 s.
            self.store, lambda: self.config, [], ControllerSettings(owner=owner, tick_s=0.05, lease_ttl_s=3.0),
            caps_provider=RolloutDriver(self.store),
        )

    def drive(self, ctl: Controller) -> asyncio.Task[None]:
        """Run ``ctl``'s cycles until ``kill(task)`` (or the test ends)."""

        async def loop() -> None:
            # Checked each cycle as well as cancelled: a cancellation that lands inside a
            # Redis command can be absorbed by the client, and the loop must still end.
            while not self.stop.is_set() and not killed.is_set():
                await ctl.cycle()
                await asyncio.sleep(0.05)

        killed = asyncio.Event()
        task = asyncio.create_task(loop())
        self._kill[task] = killed
        self.tasks.append(task)
        return task

    async def kill(self, task: asyncio.Task[None]) -> None:
        """Stop a controller loop abruptly (mid-cycle if it is in one)."""
        self._kill[task].set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def deploy(self, region: str, **quality: Any) -> None:
        async with self.http.post(self.sims[region].url + "/_sim/state", json={"version": "v2", **quality}) as r:
            assert r.status == 200, await r.text()

    async def state(self) -> RolloutState:
        return (await load(self.store, [NAME]))[NAME][0]

    async def wait(self, pred: Callable[[RolloutState], bool], timeout: float = 20.0) -> RolloutState:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.stop.is_set():
            st = await self.state()
            if pred(st):
                return st
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out: {st.status}: {st.reason}")
            await asyncio.sleep(0.05)
        raise asyncio.CancelledError

    async def start_rollout(self) -> None:
        svc = self.config.policy.services[0]
        await update(self.store, NAME, lambda _cur: machine.start(
            SPEC, time.time(), model=svc.model,
            service_regions=svc.regions, ttl_s=float(svc.ttl),
            report_timeout_s=self.config.policy.health.report_timeout_s, actor="test"))

    def pipeline(self, deploy: Callable[[str], Awaitable[None]], *, use_cli: bool = False) -> None:
        """A CD pipeline: deploy each region, wave by wave, once it is ready for deploy."""

        async def run() -> None:
            for wave in WAVES:
                for region in wave:
                    if use_cli:
                        code, out, err = await self.gtm_rollout(
                            "wait-ready", NAME, region, "--timeout", "30", "--poll", "0.05"
                        )
                        assert code == 0, err
                        assert f"{region} ready for deploy of v2" in out
                    else:
                        await self.wait(lambda st, r=region: st.ready_for_deploy(r))  # type: ignore[misc]
                    await deploy(region)

        self.tasks.append(asyncio.create_task(run()))


@pytest.fixture
async def fleets() -> AsyncIterator[Fleets]:
    ns = f"rollout-{uuid.uuid4().hex}"
    store = connect(REDIS_URL, ns=ns)  # socket timeouts: a cancelled command never hangs a test
    agent_stores: list[Store] = []
    runners: list[web.AppRunner] = []
    sims: dict[str, FleetSim] = {}
    regions = {}
    for i, (name, juris) in enumerate(sorted(FOUR_REGIONS.items())):
        runner, sim = await start_fleet("vllm", "127.0.0.1", 0, MODEL, "v1", 2, tokens_per_s=100_000, load=0.3,
                                        seed=i)
        runners.append(runner)
        sims[name] = sim
        src = FleetSource(name="vllm-a", kind="vllm", url=sim.url, replicas=2, version="v1", model=MODEL)
        regions[name] = make_region(name, juris, i).model_copy(update={"fleet": (src,)})
    inventory = Inventory(regions=regions)
    base = make_policy([make_service(segments=[eu_segment()], ttl=1)], report_timeout_s=2.0, rise=2)
    policy = Policy.model_validate({**base.model_dump(), "rollouts": [SPEC.model_dump()]})
    config = Config(policy=policy, inventory=inventory, digest=policy_digest(policy, inventory), files=())
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))
    world = Fleets(ns=ns, store=store, config=config, sims=sims, http=http)
    agents = []
    for r in regions.values():  # each agent with its own connections, as in production
        agent_stores.append(connect(REDIS_URL, ns=ns))
        agents.append(RegionAgent(r, agent_stores[-1], FAST_AGENT, agent_id=f"{r.name}-agent"))
    agent_tasks = [asyncio.create_task(a.run(world.stop)) for a in agents]
    try:
        yield world
    finally:
        world.stop.set()
        for t in world.tasks:
            t.cancel()
        # Bounded: the loops also watch `stop`, so they end even if a cancellation is absorbed.
        await asyncio.wait(world.tasks + agent_tasks, timeout=10)
        for proc in world.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await http.close()
        for r in runners:
            await r.cleanup()
        # Leave nothing on the shared Redis: a task still finishing may write once more.
        for _ in range(3):
            keys = [k async for k in store.client.scan_iter(match=f"gtm:{{{ns}}}:*")]
            if keys:
                await store.client.delete(*keys)
            await asyncio.sleep(0.3)
        await store.aclose()
        for s in agent_stores:
            await s.aclose()


def phases(st: RolloutState, region: str) -> list[str]:
    return [h.phase for h in st.history if h.region == region]


def assert_complete_history(st: RolloutState) -> None:
    """Steps 1..N with no gap or repeat, every region through every phase once, waves in order."""
    assert [h.step for h in st.history] == list(range(1, st.step + 1))
    assert st.history[0].phase == "running" and st.history[-1].phase == "done"
    for r in FOUR_REGIONS:
        assert phases(st, r) == PHASES, (r, phases(st, r))
    first = {r: min(h.step for h in st.history if h.region == r) for r in FOUR_REGIONS}
    last = {r: max(h.step for h in st.history if h.region == r) for r in FOUR_REGIONS}
    assert last["eu-west-1"] < first["eu-central-1"] < last["eu-central-1"] < first["us-east-1"]
    assert len(st.history) == 2 + 6 * len(FOUR_REGIONS)


async def test_good_version_completes_all_waves(fleets: Fleets) -> None:
    ctl = fleets.controller("a")
    await fleets.start_rollout()
    fleets.drive(ctl)
    fleets.pipeline(fleets.deploy, use_cli=True)
    seen_caps: dict[str, set[float]] = {}

    def observe(st: RolloutState) -> bool:
        for r, cap in machine.caps(st).items():
            seen_caps.setdefault(r, set()).add(cap.fraction)
        waves = {i for i, w in enumerate(WAVES) for r in w if st.regions[r].phase in IN_FLIGHT}
        assert len(waves) <= 1, "at most one wave in flight"
        return st.status == "done"

    st = await fleets.wait(observe, timeout=40)
    assert_complete_history(st)
    assert {0.0, 0.2} <= seen_caps["eu-west-1"], "drained to 0, then canary at 20 %"
    gate = next(h for h in st.history if h.region == "eu-west-1" and h.phase == "ramping 50%")
    assert gate.reason.startswith("gates passed") and "error_rate: ok" in gate.reason and "ttft: ok" in gate.reason
    assert all(h.token == ctl.fencing_token for h in st.history if h.actor == "controller")
    # Done: no caps left; every region serves v2 at its normal weight.
    await asyncio.sleep(0.2)
    assert ctl.caps_provider.caps() == {}  # type: ignore[union-attr]
    assert ctl.state is not None
    pool = ctl.state.pool_for("chat.gtm.example.com", "default")
    assert pool is not None and all(m.weight > 0 for m in pool.members)
    audit = await fleets.store.read_audit(200)
    assert sum(1 for _, e in audit if e.get("rollout") == NAME) == len(st.history) - 1  # start is the CLI's


@pytest.mark.parametrize(
    ("quality", "metric", "expect"),
    [
        # ~20 % (the first interval may straddle the deploy) against the 5 % ceiling.
        ({"error_rate": 0.2}, "error_rate", r"canary mean [12]\d\.\d\d% > ceiling 5\.00% \(n=\d+\)"),
        # ~1 s against ~0.2 s × (1 + tolerance 0.2), significant by Mann-Whitney U.
        ({"ttft_s": 1.0}, "ttft", r"canary median (?:0\.9\d*|1\.\d*) s > baseline median 0\.\d+ s × 1\.2 = 0\.2\d* s, "
                                  r"Mann-Whitney U p=[\d.e-]+ < 0\.05"),
    ],
    ids=["error-rate", "slow-ttft"],
)
async def test_bad_version_is_caught_and_rolled_back(
    fleets: Fleets, quality: dict[str, float], metric: str, expect: str
) -> None:
    ctl = fleets.controller("a")
    await fleets.start_rollout()
    fleets.drive(ctl)
    fleets.pipeline(lambda region: fleets.deploy(region, **quality))
    st = await fleets.wait(lambda s: s.status == "halted", timeout=20)
    p = st.regions["eu-west-1"]
    assert p.phase == "rolled-back"
    assert f"gate {metric} failed" in st.reason and re.search(expect, st.reason), st.reason
    assert st.regions["eu-central-1"].phase == "pending", "the next wave never started"
    # The controller routes the region away at once; EU traffic goes to the old version.
    await asyncio.sleep(0.3)
    stored = await fleets.store.get_desired()
    assert stored is not None
    for segment in ("eu", "default"):
        pool = stored.pool_for("chat.gtm.example.com", segment)
        assert pool is not None
        member = next(m for m in pool.members if m.region == "eu-west-1")
        assert member.weight == 0 and "ROLLED BACK" in member.reason and f"gate {metric} failed" in member.reason
        assert pool.weight_of("eu-central-1") > 0
    # It stays halted: nothing moves until an operator acts.
    await asyncio.sleep(0.5)
    again = await fleets.state()
    assert again.status == "halted" and again.step == st.step
    # `gtm rollout status` shows the reason: metric, value and threshold.
    code, out, err = await fleets.gtm_rollout("status", NAME)
    assert code == 0, err
    assert "halted" in out and f"gate {metric} failed" in out
    assert re.search(expect, out), out
    # The operator aborts; the region stays routed away until the old version is back.
    code, out, err = await fleets.gtm_rollout("abort", NAME, "--reason", "bad build", "--actor", "bob")
    assert code == 0, err
    assert "aborted by bob: bad build" in out
    await asyncio.sleep(0.3)
    assert (await fleets.state()).regions["eu-west-1"].phase == "reverting"
    async with fleets.http.post(fleets.sims["eu-west-1"].url + "/_sim/state",
                                json={"version": "v1", "error_rate": 0.0, "ttft_s": 0.2}) as r:
        assert r.status == 200
    st = await fleets.wait(lambda s: s.regions["eu-west-1"].phase == "reverted")
    assert st.status == "aborted" and machine.caps(st) == {}


async def test_controller_killed_mid_rollout_continues_without_repeat_or_skip(fleets: Fleets) -> None:
    a = fleets.controller("a")
    await fleets.start_rollout()
    task_a = fleets.drive(a)
    fleets.pipeline(fleets.deploy)
    # Kill the leader while wave 2 bakes: its loop dies mid-cycle and its lease is left to expire.
    await fleets.wait(lambda s: s.regions["eu-central-1"].phase == "canary")
    await fleets.kill(task_a)
    killed_at = (await fleets.state()).step
    token_a = a.fencing_token
    assert token_a is not None

    b = fleets.controller("b")
    fleets.drive(b)
    st = await fleets.wait(lambda s: s.status == "done", timeout=40)
    assert b.fencing_token is not None and b.fencing_token > token_a
    assert_complete_history(st)
    tokens = [h.token for h in st.history if h.actor == "controller"]
    assert set(tokens) == {token_a, b.fencing_token}
    assert all(h.token == token_a for h in st.history[:killed_at] if h.actor == "controller")
    assert all(h.token == b.fencing_token for h in st.history[killed_at:])

    # The old leader wakes up: fenced, it follows and records nothing.
    await a.cycle()
    assert not a.is_leader
    assert (await fleets.state()).history == st.history
