"""A real Prometheus (Debian's ``prometheus``) for tests: scrape targets given by job, the repo's
alert rules loaded, 1 s scrape and evaluation intervals, a temporary TSDB, bound to 127.0.0.1 on
a free port; stopped (by its own PID) and removed on exit.

The first scrape comes about 5 s after start (the scrape manager applies targets on a 5 s
tick), so wait with :meth:`Prometheus.wait_up` rather than a fixed sleep.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gtm.testing.ports import free_port

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "gtm-alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "gtm-alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "gtm-dashboard.json"


def find_binary(name: str) -> str | None:
    """``prometheus`` / ``promtool`` on PATH or in /usr/bin, else None."""
    found = shutil.which(name)
    if found:
        return found
    return f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None


class Prometheus:
    """Use as an async context manager.

    Args:
        jobs: job name → ``host:port`` targets (``/metrics`` on each).
        rules: rule files to load (absolute paths).
    """

    def __init__(self, jobs: dict[str, list[str]], rules: tuple[Path, ...] = (ALERTS,)) -> None:
        binary = find_binary("prometheus")
        if binary is None:
            raise FileNotFoundError("prometheus")
        self.binary = binary
        self.jobs, self.rules = jobs, rules
        self.root = Path(tempfile.mkdtemp(prefix="gtm-prometheus-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Prometheus:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in self.rules],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in self.jobs.items()],
        }
        cfg = self.root / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config))
        self.port = free_port()
        with open(self.root / "prometheus.log", "wb") as log:
            self.proc = subprocess.Popen([
                self.binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
            ], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``'s ``data``. Raises ``RuntimeError`` on an error answer."""
        assert self._http is not None and self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log()[-2000:]}")
        async with self._http.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (a vector: one dict per series)."""
        data = await self.api("query", query=expr)
        result = data["result"]
        return result if data["resultType"] == "vector" else [{"value": result}]

    async def wait_up(self, targets: int, timeout: float = 30.0) -> None:
        """Wait until ``targets`` scrape targets report ``up == 1``."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = await self.query("up == 1")
                if len(last) >= targets:
                    return
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.25)
        raise TimeoutError(f"only {last} up after {timeout}s; prometheus log:\n{self.log()[-2000:]}")
