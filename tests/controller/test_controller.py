"""The controller loop against a real Redis server and the embedded fakeredis store:
config rejection, steady state, static stability, leader lease and fencing, bad reports.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gtm.config.loader import Config, load_config, policy_digest
from gtm.controller.loop import Controller, ControllerSettings
from gtm.errors import ConfigError
from gtm.models.plan import DesiredState
from gtm.store import Store, connect
from gtm.store.keys import Keys
from gtm.testing.redis import RedisProcess
from tests.conftest import LoopWatchdog
from tests.factories import T0, eu_segment, make_inventory, make_policy, make_report, make_service
from tests.support.redis import REDIS_URL

# The controller's loop also answers DNS: a test fails when it was blocked (see conftest.py).
pytestmark = pytest.mark.usefixtures("loop_watchdog")


class RecordingPublisher:
    """A real in-process publisher that records what it was asked to serve."""

    def __init__(self, name: str = "recorder") -> None:
        self.name = name
        self.states: list[DesiredState] = []
        self.digest: str | None = None

    async def publish(self, state: DesiredState) -> bool:
        if state.routing_digest() == self.digest:
            return False
        self.digest = state.routing_digest()
        self.states.append(state)
        return True


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_config() -> Config:
    policy = make_policy([make_service(segments=[eu_segment()])])
    inv = make_inventory()
    return Config(policy=policy, inventory=inv, digest=policy_digest(policy, inv), files=())


@pytest.fixture(params=["redis", "embedded"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    ns = f"test-{uuid.uuid4().hex}"
    if request.param == "redis":
        client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        s = Store(client, Keys(ns))
    else:
        s = connect("embedded://", ns=ns)
    yield s
    keys = [k async for k in s.client.scan_iter(match=f"gtm:{{{ns}}}:*")]
    if keys:
        await s.client.delete(*keys)
    await s.aclose()


async def put_healthy(store: Store, now: float, **spare: float) -> None:
    for region in ("eu-central-1", "eu-west-1", "us-east-1", "us-west-2"):
        await store.put_report(make_report(region, now, spare=spare.get(region.replace("-", "_"), 10.0)),
                               ttl_s=60, changed=True)


async def test_plans_publishes_and_audits(store: Store) -> None:
    clock = Clock()
    pub = RecordingPublisher()
    ctl = Controller(store, make_config, [pub], ControllerSettings(owner="a"), clock=clock)
    await put_healthy(store, clock.t, us_east_1=20.0)
    state = await ctl.cycle()
    assert state is not None and not state.held
    assert ctl.is_leader and ctl.fencing_token is not None
    assert len(pub.states) == 1
    stored = await store.get_desired()
    assert stored is not None and stored.routing_digest() == state.routing_digest()
    audit = await store.read_audit(10)
    assert len(audit) == 1 and audit[0][1]["fencing_token"] == str(ctl.fencing_token)
    assert (await store.get_applied("recorder"))["generation"] == state.generation  # type: ignore[index]


async def test_steady_state_makes_no_writes(store: Store) -> None:
    clock = Clock()
    pub = RecordingPublisher()
    ctl = Controller(store, make_config, [pub], ControllerSettings(owner="a"), clock=clock)
    await put_healthy(store, clock.t)
    await ctl.cycle()
    for _ in range(10):
        clock.t += 0.5
        await put_healthy(store, clock.t)
        await ctl.cycle()
    assert len(pub.states) == 1, "an unchanged plan must not be published again"
    assert len(await store.read_audit(100)) == 1, "no audit entry without a decision"


async def test_failover_published_on_next_cycle(store: Store) -> None:
    clock = Clock()
    pub = RecordingPublisher()
    ctl = Controller(store, make_config, [pub], ControllerSettings(owner="a"), clock=clock)
    await put_healthy(store, clock.t)
    await ctl.cycle()
    clock.t += 0.3
    await store.put_report(make_report("eu-west-1", clock.t, healthy=False, fail=2, reason="/health 503"),
                           ttl_s=60, changed=True)
    state = await ctl.cycle()
    assert state is not None
    eu = state.pool_for("chat.gtm.example.com", "eu")
    assert eu is not None and eu.weight_of("eu-west-1") == 0 and eu.weight_of("eu-central-1") > 0
    assert pub.states[-1].routing_digest() == state.routing_digest()
    assert "/health 503" in state.regions["eu-west-1"].reason


async def test_bad_policy_keeps_last_good() -> None:
    store = connect("embedded://", ns="cfg")
    good = make_config()
    calls = {"n": 0}

    def loader() -> Config:
        calls["n"] += 1
        if calls["n"] > 1:
            raise ConfigError(["policies/x.yaml:3: services[0].ttl: Input should be >= 1 (value: -5)"])
        return good

    clock = Clock()
    ctl = Controller(store, loader, [RecordingPublisher()], ControllerSettings(owner="a"), clock=clock)
    await put_healthy(store, clock.t)
    first = await ctl.cycle()
    clock.t += 1
    second = await ctl.cycle()
    assert ctl.config is good
    assert ctl.stats.config_errors == 1
    assert first is not None and second is not None
    assert second.policy_digest == good.digest and not second.held
    await store.aclose()


async def test_a_policy_that_cannot_be_published_never_replaces_the_last_good(tmp_path: Path) -> None:
    """The controller checks a policy with the same loader as ``gtm policy validate``: a policy
    that would publish something other than written (here a static weight left out) is refused
    whole and the one in force stays."""
    root = Path(__file__).resolve().parents[2]
    policies = tmp_path / "policies"
    policies.mkdir()
    text = (root / "policies" / "default.yaml").read_text()
    (policies / "default.yaml").write_text(text)
    store = connect("embedded://", ns="cfg-publish")
    ctl = Controller(store, lambda: load_config(policies, root / "regions"), [RecordingPublisher()],
                     ControllerSettings(owner="a"), clock=Clock())
    await ctl.cycle()
    good = ctl.config
    assert good is not None and ctl.stats.config_errors == 0
    (policies / "default.yaml").write_text(text.replace("{us-east-1: 200, eu-west-1: 55}", "{us-east-1: 200}"))
    await ctl.cycle()
    assert ctl.config is good
    assert ctl.stats.config_errors == 1
    assert "static_weights gives no weight to regions ['eu-west-1']" in ctl.stats.last_error
    await store.aclose()


async def test_malformed_report_is_counted_not_fatal(store: Store) -> None:
    clock = Clock()
    ctl = Controller(store, make_config, [RecordingPublisher()], ControllerSettings(owner="a"), clock=clock)
    await put_healthy(store, clock.t)
    await store.client.set(store.keys.report("us-west-2"), '{"region": "us-west-2", "seq": "x"}')
    assert await ctl.cycle() is None  # a new leader with nothing to continue from warms up first
    clock.t += 3.5  # past warmup_s: plan with what there is
    # The other agents heartbeat meanwhile (reports 3.5 s old, beyond their 2 s heartbeat, would
    # be lapsing with us-west-2's: a mass lapse, held).
    for region in ("eu-central-1", "eu-west-1", "us-east-1"):
        await store.put_report(make_report(region, clock.t), ttl_s=60, changed=False)
    state = await ctl.cycle()
    assert state is not None and not state.held
    assert ctl.stats.rejected_reports == 1
    assert state.regions["us-west-2"].state == "unknown"
    assert (await store.rejected_counts()) == {"us-west-2": 1}


async def test_follower_serves_leaders_state_and_stale_leader_is_fenced(store: Store) -> None:
    clock = Clock()
    pub_a, pub_b = RecordingPublisher("a"), RecordingPublisher("b")
    a = Controller(store, make_config, [pub_a], ControllerSettings(owner="a"), clock=clock)
    b = Controller(store, make_config, [pub_b], ControllerSettings(owner="b"), clock=clock)
    await put_healthy(store, clock.t)
    await a.cycle()
    await b.cycle()
    assert a.is_leader and not b.is_leader
    assert pub_b.digest == pub_a.digest, "the follower serves the leader's routing"

    # The lease expires (a paused leader) and b takes over with a newer fencing token.
    await store.client.delete(store.keys.leader)
    await b.cycle()
    assert b.is_leader and b.fencing_token is not None and a.fencing_token is not None
    assert b.fencing_token > a.fencing_token
    # a wakes up and tries to write: refused, and it steps down.
    clock.t += 1
    await store.put_report(make_report("us-east-1", clock.t, healthy=False, fail=3), ttl_s=60, changed=True)
    await a.cycle()
    assert not a.is_leader
    stored = await store.get_desired()
    assert stored is not None
    assert stored.regions["us-east-1"].state == "healthy", "the stale leader's plan was not written"


async def test_redis_down_holds_last_good_routing() -> None:
    with RedisProcess() as rp:
        client = aioredis.Redis.from_url(rp.url, decode_responses=True, socket_timeout=0.5,
                                         socket_connect_timeout=0.5)
        store = Store(client, Keys("down"))
        clock = Clock()
        pub = RecordingPublisher()
        ctl = Controller(store, make_config, [pub], ControllerSettings(owner="a"), clock=clock)
        await put_healthy(store, clock.t)
        good = await ctl.cycle()
        rp.stop()
        clock.t += 30  # long past every report timeout
        held = await ctl.cycle()
        assert held is good, "with Redis unreachable the controller changes nothing"
        assert ctl.stats.store_errors >= 1
        assert len(pub.states) == 1
        await store.aclose()


async def test_most_reports_missing_is_static_stability(store: Store) -> None:
    clock = Clock()
    pub = RecordingPublisher()
    ctl = Controller(store, make_config, [pub], ControllerSettings(owner="a"), clock=clock)
    await put_healthy(store, clock.t)
    good = await ctl.cycle()
    assert good is not None
    clock.t += 7  # every report is now older than report_timeout_s (6 s)
    await store.put_report(make_report("us-east-1", clock.t), ttl_s=60, changed=True)
    state = await ctl.cycle()
    assert state is not None and state.held
    assert "static stability" in state.hold_reason
    assert state.routing_digest() == good.routing_digest()
    assert len(pub.states) == 1


async def test_a_bad_report_is_counted_once_and_the_next_good_one_is_used(store: Store) -> None:
    clock = Clock()
    ctl = Controller(store, make_config, [RecordingPublisher()], ControllerSettings(owner="a"), clock=clock)
    await put_healthy(store, clock.t)
    await store.client.set(store.keys.report("us-west-2"), '{"region": "us-west-2", "spare_capacity": 1e308}')
    for _ in range(5):
        clock.t += 0.5
        await ctl.cycle()
    assert ctl.stats.rejected_reports == 1
    assert (await store.rejected_counts()) == {"us-west-2": 1}
    await store.put_report(make_report("us-west-2", clock.t), ttl_s=60, changed=True)
    state = await ctl.cycle()
    assert state is not None and state.regions["us-west-2"].state == "healthy"


async def test_fencing_token_grows_per_leader_not_per_attempt(store: Store) -> None:
    clock = Clock()
    a = Controller(store, make_config, [], ControllerSettings(owner="a"), clock=clock)
    b = Controller(store, make_config, [], ControllerSettings(owner="b"), clock=clock)
    await put_healthy(store, clock.t)
    for _ in range(10):
        await a.cycle()
        await b.cycle()
    assert a.fencing_token == 1 and not b.is_leader
    assert int(await store.client.get(store.keys.epoch)) == 1
    await store.client.delete(store.keys.leader)
    await b.cycle()
    assert b.fencing_token == 2


async def test_engine_failure_holds_last_good_routing(store: Store) -> None:
    clock = Clock()
    pub = RecordingPublisher()
    calls = {"n": 0}

    async def exploding_caps(ctl: Controller, reports: object, now: float) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("boom")

    ctl = Controller(store, make_config, [pub], ControllerSettings(owner="a"), clock=clock,
                     caps_provider=exploding_caps)
    await put_healthy(store, clock.t)
    good = await ctl.cycle()
    clock.t += 1
    again = await ctl.cycle()
    assert again is good and ctl.stats.engine_errors == 1 and len(pub.states) == 1


async def test_a_new_leader_warms_up_and_keeps_its_routing_when_redis_is_emptied(store: Store) -> None:
    clock = Clock()
    pub = RecordingPublisher()
    ctl = Controller(store, make_config, [pub], ControllerSettings(owner="a"), clock=clock)
    await put_healthy(store, clock.t)
    good = await ctl.cycle()
    assert good is not None
    # Redis loses everything (restart without persistence); two agents have reported again.
    keys = [k async for k in store.client.scan_iter(match=f"{store.keys.prefix}*")]
    await store.client.delete(*keys)
    clock.t += 1
    for r in ("us-east-1", "eu-west-1"):
        await store.put_report(make_report(r, clock.t), ttl_s=60, changed=True)
    for _ in range(3):  # lease lost with the data, re-acquired: warms up on the routing it had
        state = await ctl.cycle()
        assert state is not None and state.routing_digest() == good.routing_digest()
    assert len(pub.states) == 1, "no half-empty picture was published"
    clock.t += 3.5  # warm-up over, the other agents never came back: now they are failed over
    for r in ("us-east-1", "eu-west-1"):
        await store.put_report(make_report(r, clock.t), ttl_s=60, changed=True)
    state = await ctl.cycle()
    assert state is not None and state.pool_for("chat.gtm.example.com", "eu").weight_of("eu-central-1") == 0
    # A brand-new replica with no memory waits for every region (up to warmup_s).
    fresh = Controller(store, make_config, [RecordingPublisher()], ControllerSettings(owner="b"), clock=clock)
    ctl.lease = None
    await store.client.delete(store.keys.leader)
    await store.client.delete(store.keys.desired)
    assert await fresh.cycle() is None


async def test_a_cleared_flap_damping_lets_the_region_back_on_the_next_cycle(store: Store) -> None:
    def config() -> Config:
        policy = make_policy([make_service(segments=[eu_segment()])], flap_threshold=3, flap_window_s=60,
                             flap_penalty_s=600, rise=1, fall=1)
        inv = make_inventory()
        return Config(policy=policy, inventory=inv, digest=policy_digest(policy, inv), files=())

    clock = Clock()
    ctl = Controller(store, config, [RecordingPublisher()], ControllerSettings(owner="a"), clock=clock)
    for bad in (False, True, False, True, False):
        clock.t += 1
        await put_healthy(store, clock.t)
        if bad:
            await store.put_report(make_report("eu-west-1", clock.t, healthy=False, fail=1), ttl_s=60, changed=True)
        state = await ctl.cycle()
    assert state is not None and state.regions["eu-west-1"].damped_until > clock.t
    eu = state.pool_for("chat.gtm.example.com", "eu")
    assert eu is not None and eu.weight_of("eu-west-1") == 0
    await store.clear_damping("eu-west-1", clock.t, "alice", "fixed")
    clock.t += 1
    await put_healthy(store, clock.t)
    state = await ctl.cycle()
    assert state is not None and state.regions["eu-west-1"].damped_until == 0.0
    eu = state.pool_for("chat.gtm.example.com", "eu")
    assert eu is not None and eu.weight_of("eu-west-1") > 0


async def test_a_policy_change_to_providers_swaps_the_provider_workers(store: Store) -> None:
    """Providers come from the policy: a reload that changes them builds new ones (the old ones
    finish and stop); one that cannot be built keeps the providers in force."""
    import asyncio

    from gtm.errors import ConfigError
    from gtm.models.policy import ProviderConfig

    built: dict[str, RecordingPublisher] = {}
    names: list[str] = ["route53-a"]
    fail = False

    def config() -> Config:
        base = make_config()
        provs = tuple(ProviderConfig(name=n, kind="route53", options={"hosted_zone_id": "Z1"}) for n in names)
        policy = base.policy.model_copy(update={"providers": provs})
        return Config(policy=policy, inventory=base.inventory, digest=policy_digest(policy, base.inventory), files=())

    def factory(policy: object) -> list[RecordingPublisher]:
        if fail:
            raise ConfigError(["providers[0].options.hosted_zone_id: no such zone"])
        out = []
        for p in policy.providers:  # type: ignore[attr-defined]
            built[p.name] = RecordingPublisher(p.name)
            out.append(built[p.name])
        return out

    first = factory(config().policy)
    await put_healthy(store, T0)
    ctl = Controller(store, config, [], ControllerSettings(owner="a", tick_s=0.05), clock=lambda: T0,
                     providers=first, provider_factory=factory)
    stop = asyncio.Event()
    task = asyncio.create_task(ctl.run(stop))

    async def until(pred: object, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not pred():  # type: ignore[operator]
            assert asyncio.get_running_loop().time() < deadline, "condition not met"
            await asyncio.sleep(0.02)

    try:
        await until(lambda: len(built["route53-a"].states) == 1)
        names[:] = ["route53-b"]  # the next reload names another provider
        await until(lambda: "route53-b" in built and len(built["route53-b"].states) == 1)
        assert [w.name for w in ctl.workers] == ["route53-b"]
        # The new provider starts from the routing in force (same pools; the policy digest moved).
        assert built["route53-b"].states[0].pools == built["route53-a"].states[0].pools
        assert built["route53-b"].states[0].policy_digest == config().digest

        fail, names[:] = True, ["route53-c"]
        await until(lambda: ctl.stats.last_error.startswith("providers not reconfigured"))
        assert "no such zone" in ctl.stats.last_error
        assert [w.name for w in ctl.workers] == ["route53-b"], "a provider that cannot be built changes nothing"
        assert "route53-c" not in built
        # New routing still reaches the provider in force.
        await store.put_report(make_report("us-west-2", T0, healthy=False, fail=2), ttl_s=60, changed=True)
        await until(lambda: len(built["route53-b"].states) == 2)
        assert len(built["route53-a"].states) == 1, "the replaced provider gets nothing more"
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_the_leader_removes_expired_overrides_and_audits_it(store: Store) -> None:
    from gtm.controller.status import gather_status
    from tests.factories import make_override

    clock = Clock()
    ctl = Controller(store, make_config, [RecordingPublisher()], ControllerSettings(owner="a"), clock=clock)
    await put_healthy(store, clock.t)
    short = make_override("eu-west-1", "drain", since=clock.t, expires_at=clock.t + 5, reason="short")
    lasting = make_override("us-east-1", "cordon", since=clock.t, reason="stays")
    await store.put_override(short)
    await store.put_override(lasting)
    await ctl.cycle()
    assert set(await store.get_overrides()) == {"eu-west-1", "us-east-1"}
    clock.t += 6
    await put_healthy(store, clock.t)
    status = await gather_status(store, make_config(), now=clock.t)
    rows = {row["region"]: row for row in status["regions"]}
    assert rows["eu-west-1"]["override"] is None, "an expired drain is not shown as in force"
    assert rows["us-east-1"]["override"] == "cordon"
    await ctl.cycle()
    assert await store.get_overrides() == {"us-east-1": lasting}
    entry = (await store.read_audit(5))
    actions = [e for _, e in entry if e.get("action") == "drain expired"]
    assert len(actions) == 1 and actions[0]["region"] == "eu-west-1" and actions[0]["reason"] == "short"


async def test_a_slow_policy_reload_does_not_block_the_event_loop(loop_watchdog: LoopWatchdog) -> None:
    """The reload (file reads, ``git`` subprocesses for a Git-backed policy) runs off the loop
    that answers DNS: a loader taking 0.5s leaves the loop responsive all along."""
    store = connect("embedded://", ns=f"slow-{uuid.uuid4().hex}")
    good = make_config()

    def slow_loader() -> Config:
        time.sleep(0.5)  # a slow disk, a git rev-parse/cat-file on a busy repository
        return good

    clock = Clock()
    ctl = Controller(store, slow_loader, [RecordingPublisher()], ControllerSettings(owner="a"), clock=clock)
    await put_healthy(store, clock.t)
    ticks = 0
    cycle = asyncio.create_task(ctl.cycle())
    while not cycle.done():
        await asyncio.sleep(0.01)
        ticks += 1
    state = await cycle
    assert state is not None and ctl.config is good
    assert ticks >= 20, f"the loop ran only {ticks} 10ms ticks during a 0.5s reload"
    await store.aclose()
