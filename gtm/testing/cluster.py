"""A whole gtm installation as separate processes: one simulated fleet, one agent per region,
a controller with its embedded DNS, all on a real Redis. For end-to-end tests, drills and
benchmarks; everything binds to loopback and is stopped by ``close()``.

Two ways to give the regions endpoints (``Cluster.endpoints``):

* ``"documentation"`` (the default): fleets listen on 127.0.0.1, each on its own port, and the
  inventory's endpoint addresses are 192.0.2.x (``ADDRESS_TO_REGION``): DNS answers name the
  region, but nobody connects to them.
* ``"loopback"``: region i's fleet listens on ``127.0.1.(i+1)``, every fleet on the same port
  ``Cluster.endpoint_port``, and that address is the region's endpoint in the inventory (agents
  scrape and probe it there). A client that resolves the service and connects to
  ``http://<answer>:<endpoint_port>`` reaches the answered region's fleet, as a real client
  reaches a real endpoint (``Cluster.address_to_region`` names the region of an answer).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gtm.providers.dnsclient import query
from gtm.sim.fleet import HEALTH_ROUTES
from gtm.testing.ports import free_port
from gtm.testing.procs import LogDirGroup
from gtm.testing.scenario import ADDRESS_TO_REGION, EU_CLIENT, FQDN, US_CLIENT
from gtm.testing.scenario import REGIONS as _SCENARIO_REGIONS

__all__ = ["ADDRESS_TO_REGION", "ENDPOINT_MODES", "EU_CLIENT", "FQDN", "REGIONS", "US_CLIENT", "Cluster",
           "loopback_address", "write_config"]

# region, jurisdiction, continent, client network, endpoint address, engine kind (the scenario's
# regions; every fleet here has 2 replicas)
REGIONS = [r[:6] for r in _SCENARIO_REGIONS]

ENDPOINT_MODES = ("documentation", "loopback")
"""``Cluster.endpoints``: 192.0.2.x endpoints nobody reaches, or fleets on 127.0.1.x (module doc)."""


def loopback_address(index: int) -> str:
    """The loopback address region number ``index`` (0-based, ``REGIONS`` order) listens on in
    ``loopback`` mode: ``127.0.1.(index+1)``."""
    return f"127.0.1.{index + 1}"


def _fleet_host(region: str, endpoints: str) -> str:
    """The address ``region``'s fleet listens on."""
    if endpoints == "loopback":
        return loopback_address(next(i for i, r in enumerate(REGIONS) if r[0] == region))
    return "127.0.0.1"


def _shared_port() -> int:
    """A port free for TCP on every region's loopback address (``loopback`` mode).

    Raises:
        RuntimeError: no such port after 50 tries.
    """
    hosts = [loopback_address(i) for i in range(len(REGIONS))]
    for _ in range(50):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}")


def write_config(root: Path, fleet_ports: dict[str, int], *, routing: str = "static",
                 planned_step: int = 255, health: dict[str, Any] | None = None,
                 vantage: bool = True, endpoints: str = "documentation", ttl: int = 30,
                 extra_policy: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``regions/`` and ``policy.yaml`` for the cluster; returns their paths.

    ``endpoints`` is ``documentation`` (fleets on 127.0.0.1, endpoints 192.0.2.x) or
    ``loopback`` (region i's fleet and endpoint on 127.0.1.(i+1)); see the module doc. ``ttl`` is
    the service's DNS TTL, seconds.

    With ``vantage`` each region's ``vantage_url`` is its fleet's health URL (the fleet stands
    in for the region's public endpoint), so every agent probes the other regions.

    ``routing: static`` with equal weights makes the answer shares a clean signal for timing
    (every region 25 %); ``planned_step: 255`` makes recovery immediate so trials are short.
    Health settings are the defaults (fall 2, rise 3, report timeout 6 s) unless ``health``
    gives policy ``health`` fields (e.g. a short ``report_timeout_s``, with agents started with
    a matching ``--heartbeat``/``--report-ttl`` in ``Cluster.extra_agent_args``).
    ``extra_policy`` adds (or replaces) top-level policy sections, e.g. ``rollouts``.
    """
    regions_dir = root / "regions"
    regions_dir.mkdir(parents=True, exist_ok=True)
    if endpoints not in ENDPOINT_MODES:
        raise ValueError(f"endpoints must be one of {ENDPOINT_MODES}, not {endpoints!r}")
    for name, jur, cont, net, addr, kind in REGIONS:
        host = _fleet_host(name, endpoints)
        base = f"http://{host}:{fleet_ports[name]}"
        doc = {
            "name": name, "jurisdiction": jur,
            "geography": {"continent": cont, "client_networks": [net]},
            "endpoints": [{"address": host if endpoints == "loopback" else addr}],
            "fleet": [{"name": f"{kind}-a", "kind": kind, "url": base,
                       "model": "llama-3.1-8b", "version": "v1", "replicas": 2}],
        }
        if vantage:
            doc["vantage_url"] = f"{base}{HEALTH_ROUTES[kind][0]}"
        (regions_dir / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    svc: dict[str, Any] = {
        "name": "chat", "fqdn": FQDN, "zone": "gtm.example.com", "ttl": ttl, "model": "llama-3.1-8b",
        "routing": routing, "regions": [r[0] for r in REGIONS],
        "segments": [
            {"name": "eu", "match": {"continents": ["EU"]}, "residency": {"jurisdictions": ["EU"]}},
            {"name": "default"},
        ],
    }
    if routing == "static":
        svc["static_weights"] = {r[0]: 100 for r in REGIONS}
    policy = {
        "name": "cluster",
        "zones": [{"name": "gtm.example.com", "nameservers": ["ns1.gtm.example.com"]}],
        # Trials fail the same regions again and again: flap damping would (rightly) keep them
        # out for 10 minutes, so it is off for the cluster.
        "safety": {"planned_step": planned_step, "step_interval_s": 1.0, "flap_threshold": 0},
        "services": [svc],
    }
    if health:
        policy["health"] = dict(health)
    policy.update(extra_policy or {})
    policy_path = root / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return regions_dir, policy_path


class ProcessExitedError(RuntimeError):
    """One of the cluster's processes exited while it was expected to run."""

    def __init__(self, key: str, code: int, log_tail: str, root: Path) -> None:
        super().__init__(f"{key} exited with code {code}; logs in {root}; its log ends:\n{log_tail}")
        self.key, self.code, self.log_tail = key, code, log_tail


@dataclass
class Cluster(LogDirGroup):
    """Separate processes: fleets, agents, controller. Use as an async context manager."""

    redis_url: str
    namespace: str = field(default_factory=lambda: f"cluster-{os.getpid()}-{time.monotonic_ns()}")
    routing: str = "static"
    planned_step: int = 255
    extra_agent_args: tuple[str, ...] = ()
    health: dict[str, Any] | None = None
    """Policy ``health`` fields (``write_config``); None keeps the defaults."""
    vantage: bool = True
    """Give every region a ``vantage_url`` (its fleet's health URL), so agents probe each other."""
    endpoints: str = "documentation"
    """``documentation`` or ``loopback`` (``ENDPOINT_MODES``; see the module doc)."""
    ttl: int = 30
    """The service's DNS TTL, seconds."""
    api: bool = False
    """Serve the controller's HTTP API (status page, /metrics) on ``api_port``."""
    agent_metrics: bool = False
    """Serve each agent's /metrics (``--metrics-listen``) on ``agent_metrics_ports[region]``."""
    extra_policy: dict[str, Any] | None = None
    """Top-level policy sections added to the cluster's policy (``write_config``)."""
    extra_controller_args: tuple[str, ...] = ()
    api_port: int = 0
    agent_metrics_ports: dict[str, int] = field(default_factory=dict)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gtm-cluster-")))
    fleet_ports: dict[str, int] = field(default_factory=dict)
    dns_port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _stopped: set[str] = field(default_factory=set)
    policy_path: Path | None = None
    regions_dir: Path | None = None
    _controller_argv: list[str] = field(default_factory=list)
    _agent_argv: list[str] = field(default_factory=list)

    def _spawn(self, key: str, argv: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.root / f"{key}.log", "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        self.procs[key] = proc
        return proc

    @property
    def address_to_region(self) -> dict[str, str]:
        """Endpoint address (as DNS answers it) → region."""
        if self.endpoints == "loopback":
            return {loopback_address(i): r[0] for i, r in enumerate(REGIONS)}
        return dict(ADDRESS_TO_REGION)

    @property
    def endpoint_port(self) -> int:
        """The port every fleet listens on in ``loopback`` mode (clients connect to
        ``http://<answer>:<endpoint_port>``).

        Raises:
            RuntimeError: not in ``loopback`` mode (fleets have their own ports and the
                endpoints are unreachable), or not started.
        """
        if self.endpoints != "loopback" or not self.fleet_ports:
            raise RuntimeError("endpoint_port: only a started Cluster(endpoints='loopback') has reachable endpoints")
        return next(iter(self.fleet_ports.values()))

    @property
    def dns_address(self) -> tuple[str, int]:
        """``(host, port)`` of the controller's embedded DNS (UDP and TCP)."""
        return "127.0.0.1", self.dns_port

    def fleet_url(self, region: str) -> str:
        """``http://host:port`` of ``region``'s simulated fleet."""
        return f"http://{_fleet_host(region, self.endpoints)}:{self.fleet_ports[region]}"

    def start_fleet(self, region: str) -> None:
        self._stopped.discard(f"fleet-{region}")
        kind = next(r[5] for r in REGIONS if r[0] == region)
        self._spawn(f"fleet-{region}", [
            sys.executable, "-m", "gtm.sim", "--kind", kind, "--host", _fleet_host(region, self.endpoints),
            "--port", str(self.fleet_ports[region]), "--model", "llama-3.1-8b", "--version", "v1",
            "--replicas", "2",
        ])

    async def wait_fleet(self, region: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _r, w = await asyncio.open_connection(_fleet_host(region, self.endpoints),
                                                      self.fleet_ports[region])
                w.close()
                await w.wait_closed()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise TimeoutError(f"fleet {region} did not start; see {self.root}/fleet-{region}.log")

    async def start(self) -> None:
        if self.endpoints == "loopback":
            shared = _shared_port()
            self.fleet_ports = {r[0]: shared for r in REGIONS}
        else:
            self.fleet_ports = {r[0]: free_port() for r in REGIONS}
        self.dns_port = free_port()
        regions_dir, policy = write_config(self.root, self.fleet_ports, routing=self.routing,
                                           planned_step=self.planned_step, health=self.health,
                                           vantage=self.vantage, endpoints=self.endpoints, ttl=self.ttl,
                                           extra_policy=self.extra_policy)
        self.policy_path, self.regions_dir = policy, regions_dir
        if self.api:
            self.api_port = free_port()
        if self.agent_metrics:
            self.agent_metrics_ports = {r: free_port() for r in self.fleet_ports}
        for region in self.fleet_ports:
            self.start_fleet(region)
        for region in self.fleet_ports:
            await self.wait_fleet(region)
        gtm = [sys.executable, "-m", "gtm.cli.main"]
        common = ["--redis", self.redis_url, "--ns", self.namespace]
        self._agent_argv = [*gtm, "agent", "--regions", str(regions_dir), *common, *self.extra_agent_args]
        for region in self.fleet_ports:
            self.start_agent(region)

        def controller_argv() -> list[str]:
            api = f"127.0.0.1:{self.api_port}" if self.api else "off"
            return [*gtm, "controller", "--policies", str(policy), "--regions", str(regions_dir),
                    "--api-listen", api, *common, *self.extra_controller_args]

        self._controller_argv = controller_argv()
        for attempt in range(3):
            self._spawn("controller", [*self._controller_argv, "--dns-listen", f"127.0.0.1:{self.dns_port}"])
            try:
                await self.wait_shares(lambda s: len(s) == 4 and "none" not in s, timeout=30)
                return
            except ProcessExitedError as exc:
                # Another program took the DNS port between our check and the bind: pick another.
                if exc.key != "controller" or "cannot listen" not in exc.log_tail or attempt == 2:
                    raise
                if "HTTP API" in exc.log_tail:  # the same for the API's port
                    self.api_port = free_port()
                    self._controller_argv = controller_argv()
                else:
                    self.dns_port = free_port()

    def _check_alive(self) -> None:
        """Raise ``ProcessExitedError`` (with the end of its log) for a process that has died."""
        for key, proc in self.procs.items():
            code = proc.poll()
            if code is not None and key not in self._stopped:
                raise ProcessExitedError(key, code, self.log(key)[-2000:], self.root)

    async def shares(self, subnet: str, n: int) -> dict[str, float]:
        """Answer shares per region over ``n`` real UDP queries from ``subnet``."""
        counts: dict[str, int] = {}
        for _ in range(n):
            region = await self.answer(subnet)
            counts[region] = counts.get(region, 0) + 1
        return {r: c / n for r, c in counts.items()}

    async def answer(self, subnet: str) -> str:
        """The region one real query from ``subnet`` is answered with (``none``/``error``)."""
        try:
            resp = await query("127.0.0.1", self.dns_port, FQDN, "A", client_subnet=subnet, timeout=0.5)
        except Exception:
            return "error"
        for rrset in resp.answer:
            for rd in rrset:
                return self.address_to_region.get(rd.to_text(), "other")
        return "none"

    async def wait_shares(self, pred: Any, timeout: float, subnet: str = US_CLIENT) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            self._check_alive()
            if pred(await self.shares(subnet, 40)):
                return time.monotonic() - start
            await asyncio.sleep(0.05)
        self._check_alive()
        raise TimeoutError(f"answers did not reach the expected shares in {timeout}s; logs in {self.root}")

    async def serial(self) -> int:
        """The embedded DNS's SOA serial (grows with every applied routing change)."""
        resp = await query("127.0.0.1", self.dns_port, "gtm.example.com", "SOA", timeout=0.5)
        return int(resp.answer[0][0].serial)

    async def time_until_excluded(self, region: str, t0: float, timeout: float = 10.0,
                                  confirm: int = 30, subnet: str = US_CLIENT,
                                  serial0: int | None = None) -> float:
        """Seconds from ``t0`` (monotonic) until the DNS answers exclude ``region``.

        Polls the SOA serial with real queries (about every 2 ms); at each new serial it sends
        ``confirm`` real queries for the service and, if none names ``region``, returns the
        time the new serial was first seen: an upper bound on the true moment, accurate to one
        poll. (Judging by answer streaks alone would under-estimate: the last answer naming
        the region may come well before the change.)
        """
        current = serial0 if serial0 is not None else await self.serial()
        while time.monotonic() - t0 < timeout:
            try:
                s = await self.serial()
            except Exception:
                s = current
            if s != current:
                seen = time.monotonic()
                answers = [await self.answer(subnet) for _ in range(confirm)]
                if region not in answers and all(a not in ("none", "error") for a in answers):
                    return seen - t0
                current = s
            await asyncio.sleep(0.002)
        raise TimeoutError(f"{region} still answered {timeout}s after the fault; logs in {self.root}")

    async def set_sim_state(self, region: str, **state: Any) -> dict[str, Any]:
        """``POST /_sim/state`` to ``region``'s simulated fleet (e.g. ``mode="wedged"``,
        ``blocked_vantage=["us-east-1"]``, ``blocked_all_vantage=True``); returns the new state.

        Raises:
            RuntimeError: the simulator refused the state (its error message).
        """
        url = f"{self.fleet_url(region)}/_sim/state"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
                http.post(url, json=state) as resp:
            body: dict[str, Any] = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"fleet {region} refused state {state}: {body.get('error')}")
            return body

    def signal_fleet(self, region: str, sig: signal.Signals) -> None:
        self.procs[f"fleet-{region}"].send_signal(sig)

    def start_agent(self, region: str) -> None:
        """Start (or restart) ``region``'s agent process."""
        self._stopped.discard(f"agent-{region}")
        metrics = (["--metrics-listen", f"127.0.0.1:{self.agent_metrics_ports[region]}"]
                   if region in self.agent_metrics_ports else [])
        self._spawn(f"agent-{region}", [*self._agent_argv, "--region", region, *metrics])

    def kill_agents(self) -> None:
        """SIGKILL every agent, one right after the other (all agents crash together), and reap
        them; ``start_agent`` brings each back."""
        agents = {k: p for k, p in self.procs.items() if k.startswith("agent-")}
        for key, proc in agents.items():
            self._stopped.add(key)
            proc.send_signal(signal.SIGKILL)
        for proc in agents.values():
            proc.wait(5)

    def signal_agents(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every agent process, one right after the other (SIGSTOP: all agents
        stop together, as when Redis or their network fails; SIGCONT resumes them)."""
        for key, proc in self.procs.items():
            if key.startswith("agent-"):
                proc.send_signal(sig)

    def kill_fleet(self, region: str) -> None:
        key = f"fleet-{region}"
        self._stopped.add(key)
        p = self.procs[key]
        p.send_signal(signal.SIGKILL)
        p.wait(5)

    async def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGCONT)
                    p.terminate()
                except ProcessLookupError:
                    pass
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

