"""Hypothesis profiles for the property tests, and the event-loop watchdog.

``make test`` (and CI) use ``repeatable``: a derandomized search, so a clean clone sees exactly
the examples a developer saw, and a submission cannot fail on a random draw. ``make soak``
uses ``soak``: a fresh random search, scaled up by ``GTM_HYPOTHESIS_SCALE`` (see
``factories.examples``), to hunt new counter-examples; a failure prints the blob that
reproduces it.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from hypothesis import settings

settings.register_profile("repeatable", derandomize=True, database=None, print_blob=True)
settings.register_profile("soak", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("GTM_HYPOTHESIS_PROFILE", "repeatable"))


# -- event-loop watchdog ---------------------------------------------------------------------
#
# The controller's event loop also answers DNS queries (the embedded server runs in it), so
# nothing on it may block: no file or Git reads, no subprocess, no sleep. ``loop_watchdog``
# measures how long the running loop was unable to run a callback during a test and fails the
# test when that exceeds ``GTM_TEST_LOOP_BLOCK_S`` seconds (default 0.25: generous enough for
# a loaded 2-core machine, far below a Git reload or a slow policy read). Modules that run a
# controller or the embedded DNS in-process use it via
# ``pytestmark = pytest.mark.usefixtures("loop_watchdog")``.

LOOP_BLOCK_S = float(os.environ.get("GTM_TEST_LOOP_BLOCK_S", "0.25"))

# ``connect("embedded://")`` imports fakeredis (numpy, jsonpath_ng: ~0.15 s cold) inside the
# test's loop; import it once here so that cold import is not charged to the first test using it.
importlib.import_module("fakeredis")


class _GcClock:
    """Seconds the interpreter has spent in garbage collection, from ``gc.callbacks``.

    A full collection of garbage left by earlier tests (seen: 0.36 s, in a ``__del__`` of
    google-auth objects, on a loaded CI runner) stops every thread; it is not something gtm ran
    on the loop, so the watchdog does not charge it to the test."""

    def __init__(self) -> None:
        self.total_s = 0.0
        self._started: float | None = None
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.monotonic()
        elif self._started is not None:
            self.total_s += time.monotonic() - self._started
            self._started = None


GC_CLOCK = _GcClock()


class LoopWatchdog:
    """A thread that pings ``loop`` every ``interval_s`` with ``call_soon_threadsafe`` and
    records the longest wait for the ping to run (how long the loop was blocked), with the
    loop thread's stack at the moment the wait first exceeded ``limit_s`` (what blocked it).
    Create it on the loop's thread."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval_s: float = 0.01, limit_s: float = LOOP_BLOCK_S
    ) -> None:
        self.loop = loop
        self.interval_s = interval_s
        self.limit_s = limit_s
        self.max_block_s = 0.0
        self.pings = 0
        self.culprit = ""
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-watchdog", daemon=True)

    def start(self) -> LoopWatchdog:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            ran = threading.Event()
            t0, gc0 = time.monotonic(), GC_CLOCK.total_s
            try:
                self.loop.call_soon_threadsafe(ran.set)
            except RuntimeError:  # the loop closed
                return
            while not ran.wait(0.05):
                if self._stop.is_set():
                    return
                if not self.culprit and time.monotonic() - t0 - (GC_CLOCK.total_s - gc0) > self.limit_s:
                    frame = sys._current_frames().get(self._loop_thread)
                    self.culprit = "".join(traceback.format_stack(frame)[-12:]) if frame is not None else ""
            blocked = time.monotonic() - t0 - (GC_CLOCK.total_s - gc0)
            self.max_block_s = max(self.max_block_s, blocked)
            self.pings += 1
            self._stop.wait(self.interval_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(1.0)
        return self.max_block_s


@pytest.fixture
async def loop_watchdog() -> AsyncIterator[LoopWatchdog]:
    """Fail the test when its event loop was blocked longer than ``LOOP_BLOCK_S`` seconds
    (garbage-collection pauses excluded, see ``_GcClock``)."""
    gc.collect()  # earlier tests' garbage is collected now, not during this test
    dog = LoopWatchdog(asyncio.get_running_loop()).start()
    yield dog
    await asyncio.sleep(0.02)  # let a last ping through
    blocked = dog.stop()
    if blocked > LOOP_BLOCK_S:
        pytest.fail(
            f"the event loop was blocked for {blocked:.3f}s (limit {LOOP_BLOCK_S:g}s, GTM_TEST_LOOP_BLOCK_S): "
            "something synchronous (file/Git read, subprocess, sleep) ran on it; the loop thread was in:\n"
            + dog.culprit,
            pytrace=False,
        )


# -- layout: markers -------------------------------------------------------------------------
#
# tests/ mirrors gtm/ (engine, providers, store, agent, controller, api, cli, config, sim) and
# keeps what runs whole processes together in tests/e2e/. Everything there is marked ``e2e``,
# Modules outside e2e/ that start a real server (BIND, Unbound, moto, Chromium) or wait in
# real time on purpose (probe deadlines, busy graces, a paused loop) are marked ``slow``.
# ``pytest -m "not e2e and not slow"`` (``make test-fast``, with the property tests at a quarter of
# their examples) is the developer's loop, under a minute; ``make test`` runs everything.

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_E2E_DIR = _TESTS_DIR + "e2e" + os.sep
_SLOW_MODULES = frozenset({
    "agent/test_probe.py",  # real probe deadlines and busy graces (about 30 s)
    "agent/test_agent.py",  # whole agents against fleets that hang or die
    "agent/test_stall.py",  # blocks the event loop for seconds on purpose
    "drills/test_unbound.py",  # a real Unbound, TTLs counting down
    "drills/test_report.py",  # headless Chromium
    "providers/test_contract.py",  # BIND, moto server, the Cloud DNS server
    "providers/test_rfc2136.py",  # a real BIND
    "providers/test_rfc2136_isolation.py",  # a real BIND
    "providers/test_route53_server.py",  # moto's server
    "sim/test_sim_drill.py",  # a fleet that dies and comes back
    "providers/test_route53.py",  # botocore's retry modes back off in real time; 2,500-record runs
    "providers/test_globalaccelerator.py",  # botocore's adaptive retry mode waits in real time
    "store/test_store.py",  # a Redis server that dies and comes back
    "controller/test_rollout_signals.py",  # whole agents scraping fleets of every kind
    "agent/test_vantage.py",  # vantage probes against fleets that stop answering, in real time
    "config/test_git_policies.py",  # real git repositories and subprocesses
    "config/test_policy_snapshot.py",  # whole controllers started from a snapshot
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.path)
        if path.startswith(_E2E_DIR):
            item.add_marker(pytest.mark.e2e)
        elif path.removeprefix(_TESTS_DIR) in _SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


# -- shared Redis and fleet fixtures ---------------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    """The shared test Redis (``GTM_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``)."""
    from tests.support.redis import REDIS_URL

    return REDIS_URL


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A namespace of this test's own on the shared Redis; its keys are deleted afterwards
    (and only its keys)."""
    import uuid

    import redis

    name = f"t-{uuid.uuid4().hex}"
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"gtm:{{{name}}}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
async def redis_store(redis_url: str, namespace: str) -> AsyncIterator[Any]:
    """A ``gtm.store.Store`` on the shared Redis in this test's namespace."""
    import redis.asyncio as aioredis

    from gtm.store import Store
    from gtm.store.keys import Keys

    store = Store(aioredis.Redis.from_url(redis_url, decode_responses=True), Keys(namespace))
    yield store
    await store.aclose()


@pytest.fixture
async def fleet() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Start simulated fleets (real HTTP servers on free ports): ``await fleet("vllm", 3)``
    returns the ``FleetSim`` (its ``url``, ``set_state``); every fleet stops after the test.
    Keyword arguments go to ``gtm.sim.fleet.start_fleet`` (``model``, ``version``, ``load``,
    ``tokens_per_s``, ``mode``, ``seed``)."""
    from gtm.sim.fleet import start_fleet

    runners: list[Any] = []

    async def make(kind: str = "vllm", replicas: int = 3, *, model: str = "llama-3.1-8b", version: str = "v1",
                   **kw: Any) -> Any:
        runner, sim = await start_fleet(kind, "127.0.0.1", 0, model, version, replicas, **kw)
        runners.append(runner)
        return sim

    yield make
    for runner in runners:
        await runner.cleanup()
