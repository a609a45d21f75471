"""Supervised background tasks for the daemons (controller, agent).

Every background task a daemon starts goes through one ``Supervisor``::

    sup = Supervisor("controller", stop)
    sup.start("controller-events", listen(stop))
    ...
    await sup.aclose()          # at shutdown: cancels what is left; raises TaskCrashedError

A task that raises is logged at once with its traceback, and the supervisor sets the daemon's
``stop`` event, so the daemon shuts down cleanly instead of running on without the task (and
without anyone noticing until shutdown, when its exception used to be swallowed).
``aclose`` then raises ``TaskCrashedError`` naming every crashed task, so the process exits
non-zero. A task cancelled by the supervisor (shutdown, or ``finish``) is not an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from gtm.errors import TaskCrashedError
from gtm.log import get_logger

log = get_logger("tasks")

T = TypeVar("T")


class Supervisor:
    """Starts and supervises a daemon's background tasks.

    Args:
        daemon: the daemon's name, for the log.
        stop: the daemon's stop event; set when a task crashes (a new event if omitted).

    Attributes:
        failures: ``(task name, exception)`` of each task that crashed, in order.
    """

    def __init__(self, daemon: str, stop: asyncio.Event | None = None) -> None:
        self.daemon = daemon
        self.stop = stop if stop is not None else asyncio.Event()
        self.failures: list[tuple[str, BaseException]] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, name: str, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` as a task named ``name``; a crash is logged and stops the daemon."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    @property
    def crashed(self) -> bool:
        return bool(self.failures)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        self.failures.append((task.get_name(), exc))
        log.error("task %s of the %s crashed; stopping the %s", task.get_name(), self.daemon, self.daemon,
                  exc_info=exc)
        self.stop.set()

    async def finish(self, task: asyncio.Task[Any], timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds for ``task`` to end (it was asked to, e.g. through its
        own stop event), then cancel it and wait for that. Never raises the task's own failure:
        that was logged and recorded when it happened (``check``/``aclose`` raise it)."""
        await asyncio.wait({task}, timeout=timeout)
        if not task.done():
            log.warning("task %s of the %s did not stop within %ss; cancelling it", task.get_name(), self.daemon,
                        timeout)
            task.cancel()
            await asyncio.wait({task})

    def check(self) -> None:
        """Raise ``TaskCrashedError`` when a task crashed."""
        if self.failures:
            raise TaskCrashedError(self.failures)

    async def aclose(self, timeout: float = 0.0) -> None:
        """Shut down: give the tasks left up to ``timeout`` seconds to end, cancel the rest and
        wait for them; then raise ``TaskCrashedError`` if any task crashed (at any time).
        Cancelling a task here is not an error."""
        pending = set(self._tasks)
        if pending and timeout > 0:
            await asyncio.wait(pending, timeout=timeout)
        await cancel_all(pending)
        self.check()


async def cancel_all(tasks: set[asyncio.Task[Any]], retry_s: float = 0.1) -> None:
    """Cancel ``tasks`` and wait until every one has ended.

    A task that is still running ``retry_s`` seconds after its cancellation is cancelled again:
    Python 3.11's ``asyncio.wait_for`` (which redis-py awaits inside every command) swallows a
    cancellation that arrives just as its inner call completes (CPython gh-86296, fixed in
    3.12), and the task would then run on, e.g. back to waiting for its next job, for ever.
    """
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    while pending:
        _done, pending = await asyncio.wait(pending, timeout=retry_s)
        for task in pending:
            task.cancel()
