"""Provider workers: independent, latest-wins, retry on temporary failures, no call when in sync,
only the leader writes."""

from __future__ import annotations

import asyncio

import pytest

from gtm.controller.loop import Controller, ControllerSettings
from gtm.controller.provider_worker import ProviderWorker
from gtm.errors import PermanentProviderError, TemporaryProviderError
from gtm.models.plan import DesiredState
from gtm.store import connect
from tests.controller.test_controller import make_config
from tests.factories import T0, eu_segment, make_inventory, make_policy, make_report, make_service

# The controller's loop also answers DNS: a test fails when it was blocked (see conftest.py).
pytestmark = pytest.mark.usefixtures("loop_watchdog")


class FlakyProvider:
    """An in-memory provider that fails the first ``fail`` publishes with ``exc``."""

    def __init__(self, name: str, fail: int = 0, exc: type[Exception] = TemporaryProviderError,
                 delay: float = 0.0) -> None:
        self.name = name
        self.fail = fail
        self.exc = exc
        self.delay = delay
        self.calls = 0
        self.served: list[int] = []

    async def publish(self, state: DesiredState) -> bool:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail > 0:
            self.fail -= 1
            raise self.exc("injected") if self.exc is not TemporaryProviderError else TemporaryProviderError(
                "throttled", delay=0.01)
        self.served.append(state.generation)
        return True


def states(n: int) -> list[DesiredState]:
    from gtm.engine import plan

    policy = make_policy([make_service(segments=[eu_segment()])])
    inv = make_inventory()
    out: list[DesiredState] = []
    prev = None
    regions = sorted(inv.regions)
    for i in range(n):
        down = regions[i % len(regions)]  # a different region fails in each state
        reps = {r: make_report(r, T0 + i, seq=i + 1, healthy=r != down, fail=3 if r == down else None)
                for r in regions}
        prev = plan(policy, inv, reps, {}, prev, T0 + i)
        out.append(prev)
    return out


async def run_worker(worker: ProviderWorker, body) -> None:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await body()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_temporary_failures_retry_until_applied() -> None:
    store = connect("embedded://", ns="w1")
    prov = FlakyProvider("r53", fail=3)
    worker = ProviderWorker(prov, store, retry_initial_s=0.01, retry_max_s=0.05)
    s = states(1)[0]

    async def body() -> None:
        worker.submit(s)
        for _ in range(200):
            if prov.served:
                break
            await asyncio.sleep(0.01)

    await run_worker(worker, body)
    assert prov.served == [s.generation] and prov.calls == 4
    info = await store.get_applied("r53")
    assert info is not None and info["generation"] == s.generation and info["last_error"] == ""
    await store.aclose()


async def test_no_call_when_in_sync_and_latest_wins() -> None:
    store = connect("embedded://", ns="w2")
    prov = FlakyProvider("bind", delay=0.05)
    worker = ProviderWorker(prov, store)
    s1, s2, s3 = states(3)
    assert len({s1.routing_digest(), s2.routing_digest(), s3.routing_digest()}) == 3

    async def body() -> None:
        worker.submit(s1)
        await asyncio.sleep(0.01)  # s1 is being published
        worker.submit(s2)
        worker.submit(s3)  # replaces s2 before it is taken
        await asyncio.sleep(0.3)
        calls = prov.calls
        for _ in range(5):
            worker.submit(s3)  # unchanged routing: no call
        await asyncio.sleep(0.1)
        assert prov.calls == calls

    await run_worker(worker, body)
    assert prov.served == [s1.generation, s3.generation]
    await store.aclose()


async def test_permanent_failure_is_recorded_and_does_not_block_others() -> None:
    store = connect("embedded://", ns="w3")
    bad = FlakyProvider("broken", fail=100, exc=PermanentProviderError)
    good = FlakyProvider("good")
    clock = [T0]
    ctl = Controller(store, make_config, [], ControllerSettings(owner="a", tick_s=0.05), providers=[bad, good],
                     clock=lambda: clock[0])
    for r in ("eu-central-1", "eu-west-1", "us-east-1", "us-west-2"):
        await store.put_report(make_report(r, T0), ttl_s=60, changed=True)
    stop = asyncio.Event()
    task = asyncio.create_task(ctl.run(stop))
    for _ in range(100):
        if good.served:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert good.served, "the healthy provider was published although the other one fails"
    info = await store.get_applied("broken")
    assert info is not None and "PermanentProviderError" in info["last_error"]
    await store.aclose()


async def test_followers_never_write_to_external_providers() -> None:
    store = connect("embedded://", ns="w4")
    leader_prov, follower_prov = FlakyProvider("p"), FlakyProvider("p")
    a = Controller(store, make_config, [], ControllerSettings(owner="a"), providers=[leader_prov], clock=lambda: T0)
    b = Controller(store, make_config, [], ControllerSettings(owner="b"), providers=[follower_prov], clock=lambda: T0)
    for r in ("eu-central-1", "eu-west-1", "us-east-1", "us-west-2"):
        await store.put_report(make_report(r, T0), ttl_s=60, changed=True)
    await a.cycle()
    await b.cycle()
    assert a.workers[0]._pending is not None
    assert b.workers[0]._pending is None
    await store.aclose()


async def test_new_routing_cuts_a_backoff_short() -> None:
    store = connect("embedded://", ns="w5")
    prov = FlakyProvider("r53", fail=1, exc=PermanentProviderError)
    worker = ProviderWorker(prov, store, retry_initial_s=0.01, retry_max_s=30.0)
    s1, s2 = states(2)

    async def body() -> None:
        worker.submit(s1)  # fails permanently: the worker backs off for 30 s...
        for _ in range(50):
            if prov.calls:
                break
            await asyncio.sleep(0.01)
        worker.submit(s2)  # ...but new routing is published at once
        for _ in range(100):
            if prov.served:
                break
            await asyncio.sleep(0.01)

    await run_worker(worker, body)
    assert prov.served == [s2.generation]
    await store.aclose()


def test_weight_only_changes_are_not_destructive() -> None:
    from gtm.providers.records import Change, Plan, RecordSet

    old = RecordSet("p.gtm.example.com", "A", 30, ("192.0.2.1",), "r1", 255)
    plan = Plan("x", "gtm.example.com", tuple(
        Change("update", old=old, new=RecordSet("p.gtm.example.com", "A", 30, ("192.0.2.1",), f"r{i}", 64))
        for i in range(10)
    ), owned_before=10)
    plan.raise_if_unsafe(0.5)  # ten weight changes of ten record sets: routine, allowed
    rewrite = Plan("x", "gtm.example.com", (
        Change("update", old=old, new=RecordSet("p.gtm.example.com", "A", 30, ("192.0.2.9",), "r1", 255)),
        Change("delete", old=old),
    ), owned_before=3)
    import pytest

    from gtm.errors import UnsafePlanError

    with pytest.raises(UnsafePlanError, match="deletes/rewrites 2 of 3"):
        rewrite.raise_if_unsafe(0.5)
    rewrite.raise_if_unsafe(0.5, force=True)
