"""Supervised background tasks: a crashed task is logged at once and stops the daemon, which
ends with ``TaskCrashedError``; cancellation at shutdown is not an error. Also the controller
and the agent, whose background tasks go through the supervisor."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gtm.agent import AgentSettings, RegionAgent
from gtm.controller.loop import Controller, ControllerSettings
from gtm.controller.provider_worker import ProviderWorker
from gtm.errors import TaskCrashedError
from gtm.models.region import FleetSource, Region
from gtm.store import connect
from gtm.tasks import Supervisor
from tests.controller.test_controller import make_config

pytestmark = pytest.mark.usefixtures("loop_watchdog")


async def boom(after: float = 0.0) -> None:
    await asyncio.sleep(after)
    raise RuntimeError("boom")


async def test_a_crashed_task_is_logged_at_once_and_stops_the_daemon(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()
    sup = Supervisor("daemon", stop)
    forever = sup.start("forever", asyncio.sleep(3600))
    with caplog.at_level(logging.ERROR, logger="gtm.tasks"):
        sup.start("crasher", boom(0.01))
        await asyncio.wait_for(stop.wait(), 2)
    assert sup.crashed and [name for name, _ in sup.failures] == ["crasher"]
    rec = next(r for r in caplog.records if "crasher" in r.getMessage())
    assert rec.exc_info is not None and "boom" in str(rec.exc_info[1]), "logged with its traceback"
    with pytest.raises(TaskCrashedError, match="task crasher crashed: RuntimeError: boom") as info:
        await sup.aclose()
    assert forever.cancelled()
    assert isinstance(info.value.failures[0][1], RuntimeError)


async def test_cancellation_at_shutdown_is_not_an_error() -> None:
    stop = asyncio.Event()
    sup = Supervisor("daemon", stop)
    t1 = sup.start("sleeper", asyncio.sleep(3600))
    t2 = sup.start("done", asyncio.sleep(0))
    await asyncio.sleep(0.01)
    await sup.aclose()  # no raise
    assert t1.cancelled() and t2.done() and not t2.cancelled()
    assert not sup.crashed and not stop.is_set()


async def test_finish_waits_then_cancels_and_never_raises_the_tasks_failure() -> None:
    sup = Supervisor("daemon")
    slow = sup.start("slow", asyncio.sleep(3600))
    await sup.finish(slow, 0.01)
    assert slow.cancelled()
    crashed = sup.start("crashed", boom())
    await sup.finish(crashed, 1)  # the failure is recorded, not raised here...
    assert sup.stop.is_set()
    with pytest.raises(TaskCrashedError):  # ...but at shutdown
        await sup.aclose()


async def test_a_crashed_provider_worker_stops_the_controller(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    class Provider:
        name = "route53-x"

        async def publish(self, state: object) -> bool:
            return True

    async def broken_run(self: ProviderWorker, stop: asyncio.Event) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("worker bug")

    monkeypatch.setattr(ProviderWorker, "run", broken_run)
    store = connect("embedded://", ns="tasks-ctl")
    ctl = Controller(store, make_config, [], ControllerSettings(owner="a", tick_s=0.05), providers=[Provider()])
    stop = asyncio.Event()
    try:
        with caplog.at_level(logging.ERROR, logger="gtm.tasks"), pytest.raises(TaskCrashedError, match="worker bug"):
            await asyncio.wait_for(ctl.run(stop), 10)
        assert stop.is_set(), "the crash stopped the controller"
        assert ctl.lease is None and await store.client.get(store.keys.leader) is None, "lease released"
        assert any("provider-route53-x" in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        await store.aclose()


async def test_a_controller_stopped_normally_raises_nothing() -> None:
    store = connect("embedded://", ns="tasks-ctl-ok")
    ctl = Controller(store, make_config, [], ControllerSettings(owner="a", tick_s=0.05))
    stop = asyncio.Event()
    try:
        task = asyncio.create_task(ctl.run(stop))
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(task, 10)
        assert ctl.stats.cycles >= 1
    finally:
        await store.aclose()


async def test_a_crashed_report_writer_stops_the_agent(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken_writer(self: RegionAgent) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("writer bug")

    monkeypatch.setattr(RegionAgent, "_writer", broken_writer)
    region = Region(
        name="eu-west-1", jurisdiction="EU", geography={"continent": "EU"}, endpoints=[{"address": "192.0.2.30"}],
        fleet=[FleetSource(name="vllm-a", kind="vllm", url="http://127.0.0.1:9", replicas=1, version="v1")],
    )
    store = connect("embedded://", ns="tasks-agent")
    agent = RegionAgent(region, store, AgentSettings(scrape_interval_s=0.05, scrape_timeout_s=0.2))
    stop = asyncio.Event()
    try:
        with caplog.at_level(logging.ERROR, logger="gtm.tasks"), pytest.raises(TaskCrashedError, match="writer bug"):
            await asyncio.wait_for(agent.run(stop), 10)
        assert stop.is_set()
        assert any("agent-writer-eu-west-1" in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        await store.aclose()


async def test_aclose_ends_a_task_that_swallowed_its_cancellation() -> None:
    """Python 3.11's ``asyncio.wait_for`` (inside every redis-py command) can swallow a
    cancellation; the task then runs on to its next wait. ``aclose`` cancels it again."""
    swallowed = asyncio.Event()
    forever = asyncio.Event()

    async def writer() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # what the wait_for race does: the cancellation is lost...
        await forever.wait()  # ...and the task goes back to waiting for its next job

    sup = Supervisor("agent")
    task = sup.start("writer", writer())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await sup.aclose()
    assert swallowed.is_set() and task.cancelled()
