"""Waiting on conditions instead of fixed sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_until(cond: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``cond()`` every ``interval`` seconds until it is true.

    Raises:
        TimeoutError: still false after ``timeout`` seconds (the test then fails with it).
    """
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition still false after {timeout:g}s")
        await asyncio.sleep(interval)
