"""Noticing the agent's own stalls: a paused process (SIGSTOP, a VM pause) or a starved event loop.

A probe whose deadline fires while the agent itself was not running says nothing about the
engine it probed. A deadline that fires much later than set (``STALL_SLACK_S``) shows such a
stall, but not a short one: a probe with a 2 s timeout that started 0.3 s before a 2.6 s pause
times out on resume only 0.9 s late, with its answer already in the socket buffer. The monitor
closes that gap: a task ticks every ``tick_s`` and records every tick that came at least
``min_stall_s`` late as a stall (from the missed tick to the late one). A result is then judged
by whether a stall overlapped the time it ran, including a stall still going on (the loop has not
ticked yet when the timed-out probe is handled first on resume).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class LoopStallMonitor:
    """Records when this process's event loop did not run.

    Attributes:
        tick_s: seconds between ticks.
        min_stall_s: a tick at least this late (seconds) is a stall.
        keep: how many stalls are remembered (oldest dropped).
        clock: monotonic clock, seconds (``time.monotonic``).
        stalls: recorded stalls as ``(start, end)`` monotonic seconds, oldest first.
        last_tick: monotonic seconds of the latest tick.
    """

    tick_s: float = 0.1
    min_stall_s: float = 0.4
    keep: int = 256
    clock: Callable[[], float] = time.monotonic
    stalls: deque[tuple[float, float]] = field(default_factory=deque)
    last_tick: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.last_tick = self.clock()

    def tick(self) -> None:
        """Record one tick; a late one records a stall."""
        now = self.clock()
        if now - self.last_tick - self.tick_s >= self.min_stall_s:
            self.stalls.append((self.last_tick + self.tick_s, now))
            while len(self.stalls) > self.keep:
                self.stalls.popleft()
        self.last_tick = now

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every ``tick_s`` until ``stop`` is set."""
        self.last_tick = self.clock()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.tick_s)
            self.tick()

    def stalled_during(self, start: float, end: float) -> float:
        """Seconds of stall overlapping ``[start, end]`` (monotonic seconds), counting a stall
        still going on at ``end`` (the loop has not ticked for ``min_stall_s`` past its tick)."""
        total = 0.0
        for s, e in self.stalls:
            total += max(0.0, min(e, end) - max(s, start))
        due = self.last_tick + self.tick_s
        if end - due >= self.min_stall_s:
            total += max(0.0, end - max(due, start))
        return total


__all__ = ["LoopStallMonitor"]
