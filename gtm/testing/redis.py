"""A private ``redis-server`` process on a spare loopback port (tests, drills, benchmarks).

Never touches any other Redis. Needs the ``redis-server`` binary (Debian package
``redis-server``; ``scripts/ensure-services.sh`` installs it).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from gtm.testing.ports import free_port
from gtm.testing.procs import stop_process


class RedisProcess:
    """Start with ``start()``, stop with ``stop()``; ``url`` is its ``redis://`` URL.

    Args:
        port: port to bind on 127.0.0.1; 0 picks a free one (kept across restarts).
        extra: more ``redis-server`` arguments, e.g. ``["--requirepass", "s3cret"]``.
    """

    def __init__(self, port: int = 0, extra: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.extra = extra or []
        self.dir = Path(tempfile.mkdtemp(prefix="gtm-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 5.0) -> RedisProcess:
        """Start and wait until it accepts connections. Raises ``RuntimeError`` otherwise."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found; run scripts/ensure-services.sh")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

