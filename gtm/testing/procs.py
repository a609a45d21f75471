"""Small helpers for the local servers tests and drills start (named, moto, redis-server)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Self


def stop_process(proc: subprocess.Popen[bytes] | None, grace_s: float = 5.0) -> None:
    """Stop ``proc`` by its own PID: SIGTERM, then SIGKILL after ``grace_s`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace_s)


class LogDirGroup:
    """Lifecycle of a group of processes that log into ``self.root``: an async context manager
    that ``start()``s (closing again if the start fails), ``close()``s on exit, and removes the
    log folder only when nothing went wrong (``GTM_KEEP_CLUSTER_LOGS`` keeps it always).

    Subclasses provide ``root`` (a ``Path``) and async ``start()`` / ``close()``.
    """

    root: Path

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def log(self, key: str) -> str:
        """The text of ``<root>/<key>.log`` ("" when there is none)."""
        path = self.root / f"{key}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        await self.close()
        # Keep the logs when something went wrong (the error message names the folder).
        if exc_type is None and not os.environ.get("GTM_KEEP_CLUSTER_LOGS"):
            shutil.rmtree(self.root, ignore_errors=True)
