"""An anycast lab on loopback: one BIRD 2, and per region a simulated fleet and an agent process
running ``gtm agent --bgp exabgp`` (so its own ExaBGP), all on a real Redis.

For the anycast end-to-end tests, ``gtm drill anycast`` and ``bench/anycast.py``. Without a
controller (the default) the plan the agents follow is written by :meth:`AnycastLab.put_plan`
(a ``DesiredState`` whose ``announcements`` name the lab's prefix). With ``controller=True`` a
real ``gtm controller`` plans from a policy whose service ``chat`` takes both data planes (DNS
answers from its embedded server and the anycast prefix), and :meth:`AnycastLab.drain` runs
``gtm drain``. Either way the rest is the real path: agent → ExaBGP (API process) → BGP → BIRD,
read back with ``birdc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gtm.models.plan import Announcement, DesiredState
from gtm.providers.dnsclient import query
from gtm.store.store import connect
from gtm.testing.bgp import Bird, BirdRoute, bgp_region, speaker_address
from gtm.testing.cluster import ADDRESS_TO_REGION, FQDN, REGIONS, US_CLIENT
from gtm.testing.ports import free_port
from gtm.testing.procs import LogDirGroup

__all__ = ["PREFIX", "AnycastLab"]

PREFIX = "198.51.100.0/24"
"""The lab's anycast prefix (TEST-NET-2)."""


@dataclass
class AnycastLab(LogDirGroup):
    """BIRD + per region a fleet and an agent with ExaBGP. Use as an async context manager.

    Args:
        redis_url: the Redis the agents use.
        namespace: the installation namespace (a fresh one by default).
        regions: how many regions (1-4; the cluster's region names, in order).
        graceful_s: the agents' ``--bgp-graceful-s``.
        agent_args: more ``gtm agent`` arguments.
    """

    redis_url: str
    namespace: str = field(default_factory=lambda: f"anycast-{os.getpid()}-{time.monotonic_ns()}")
    regions: int = 1
    graceful_s: float = 1.0
    agent_args: tuple[str, ...] = ()
    controller: bool = False
    """Run a real controller (policy: service ``chat``, static equal weights, DNS + anycast)."""
    dns_port: int = 0
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gtm-anycast-")))
    bird: Bird | None = None
    fleet_ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    generation: int = 0

    @property
    def names(self) -> list[str]:
        return [r[0] for r in REGIONS[: self.regions]]

    def index(self, region: str) -> int:
        return self.names.index(region)

    def bgp_dir(self, region: str) -> Path:
        return self.root / f"bgp-{region}"

    def _spawn(self, key: str, argv: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.root / f"{key}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs[key] = proc
        return proc

    def write_regions(self) -> Path:
        """The lab's ``regions/``: each region's fleet and its ``bgp`` side peering with BIRD."""
        assert self.bird is not None
        d = self.root / "regions"
        d.mkdir(parents=True, exist_ok=True)
        for i, (name, jur, cont, net, addr, kind) in enumerate(REGIONS[: self.regions]):
            doc = {
                "name": name, "jurisdiction": jur,
                "geography": {"continent": cont, "client_networks": [net]},
                "endpoints": [{"address": addr}],
                "fleet": [{"name": f"{kind}-a", "kind": kind, "url": f"http://127.0.0.1:{self.fleet_ports[name]}",
                           "model": "llama-3.1-8b", "version": "v1", "replicas": 2}],
                "bgp": bgp_region(i, self.bird.port, communities=("65000:100",)),
            }
            (d / f"{name}.yaml").write_text(yaml.safe_dump(doc))
        return d

    def write_policy(self) -> Path:
        """The lab's policy: service ``chat`` over every lab region, equal static weights, on DNS
        (the controller's embedded server) and anycast (``PREFIX``); default safety rules."""
        svc: dict[str, Any] = {
            "name": "chat", "fqdn": FQDN, "zone": "gtm.example.com", "ttl": 30, "model": "llama-3.1-8b",
            "routing": "static", "static_weights": {n: 100 for n in self.names}, "regions": self.names,
            "anycast": {"prefix": PREFIX}, "segments": [{"name": "default"}],
        }
        policy = {"name": "anycast-lab",
                  "zones": [{"name": "gtm.example.com", "nameservers": ["ns1.gtm.example.com"]}],
                  "safety": {"flap_threshold": 0},  # trials fail the same region again and again
                  "services": [svc]}
        path = self.root / "policy.yaml"
        path.write_text(yaml.safe_dump(policy, sort_keys=False))
        return path

    def _gtm(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gtm.cli.main", *args, "--redis", self.redis_url, "--ns", self.namespace]

    async def drain(self, region: str, undo: bool = False) -> None:
        """``gtm drain REGION`` (``gtm undrain`` with ``undo``) against the lab's controller.
        Raises ``RuntimeError`` with its output when it fails."""
        argv = self._gtm("undrain" if undo else "drain", region, "--reason", "anycast lab")
        if not undo:  # --force: a small lab may meet the drain safety rules (headroom, min healthy)
            argv += ["--policies", str(self.root / "policy.yaml"), "--regions", str(self.root / "regions"), "--force"]
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[2:4])} failed ({proc.returncode}): {out.decode(errors='replace')}")

    async def dns_regions(self, n: int = 20) -> set[str]:
        """The regions ``n`` real DNS queries (US client subnet) to the controller are answered with."""
        seen: set[str] = set()
        for _ in range(n):
            try:
                resp = await query("127.0.0.1", self.dns_port, FQDN, "A", client_subnet=US_CLIENT, timeout=0.5)
            except Exception:
                seen.add("error")
                continue
            found = [ADDRESS_TO_REGION.get(rd.to_text(), "other") for rrset in resp.answer for rd in rrset]
            seen.update(found[:1] or ["none"])
        return seen

    async def wait_dns(self, pred: Any, timeout: float = 15.0, poll_s: float = 0.005) -> float:
        """Seconds until ``pred(regions answered)`` holds for 20 queries in a row. Raises ``TimeoutError``."""
        t0 = time.monotonic()
        seen: set[str] = set()
        while time.monotonic() - t0 < timeout:
            seen = await self.dns_regions()
            if pred(seen):
                return time.monotonic() - t0
            await asyncio.sleep(poll_s)
        raise TimeoutError(f"DNS answers did not change as expected within {timeout}s: {seen}; logs in {self.root}")

    def start_fleet(self, region: str) -> None:
        kind = REGIONS[self.index(region)][5]
        self._spawn(f"fleet-{region}", [sys.executable, "-m", "gtm.sim", "--kind", kind, "--host", "127.0.0.1",
                                        "--port", str(self.fleet_ports[region]), "--model", "llama-3.1-8b",
                                        "--version", "v1", "--replicas", "2"])

    async def wait_fleet(self, region: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", self.fleet_ports[region])
                w.close()
                await w.wait_closed()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise TimeoutError(f"fleet {region} did not start; see {self.root}/fleet-{region}.log")

    def kill_fleet(self, region: str) -> None:
        """SIGKILL ``region``'s fleet (connections refused from now on)."""
        p = self.procs.pop(f"fleet-{region}")
        p.kill()
        p.wait(5)

    def start_agent(self, region: str) -> None:
        self._spawn(f"agent-{region}", [
            sys.executable, "-m", "gtm.cli.main", "agent", "--region", region, "--regions", str(self.root / "regions"),
            "--redis", self.redis_url, "--ns", self.namespace, "--bgp", "exabgp",
            "--bgp-dir", str(self.bgp_dir(region)), "--bgp-graceful-s", str(self.graceful_s), *self.agent_args,
        ])

    def signal_agent(self, region: str, sig: signal.Signals) -> subprocess.Popen[bytes]:
        p = self.procs[f"agent-{region}"]
        p.send_signal(sig)
        return p

    def exabgp_pid(self, region: str) -> int:
        """The pid of ``region``'s ExaBGP (from its pid file). Raises ``FileNotFoundError``."""
        return int((self.bgp_dir(region) / "exabgp.pid").read_text().strip())

    async def put_plan(self, actions: dict[str, dict[str, Any]], prefix: str = PREFIX,
                       more: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
        """Store a plan whose announcements for ``prefix`` are ``actions``: region → the
        ``Announcement`` fields (``action``, ``prepend``, ``planned``, ...); ``more`` adds other
        prefixes the same way (prefix → region → fields)."""
        self.generation += 1
        by_prefix = {prefix: actions, **(more or {})}
        anns = {p: tuple(Announcement(prefix=p, region=r, **{"reason": f"lab step {self.generation}",
                                                             "changed_at": time.time(), **kw})
                         for r, kw in sorted(acts.items()))
                for p, acts in by_prefix.items()}
        state = DesiredState(generation=self.generation, generated_at=time.time(), policy_digest="lab", held=False,
                             hold_reason="", regions={}, pools={}, services={}, endpoints={}, announcements=anns)
        store = connect(self.redis_url, ns=self.namespace)
        try:
            await store.put_desired(state)
        finally:
            await store.aclose()

    async def routes(self, prefix: str = PREFIX) -> dict[str, BirdRoute]:
        """BIRD's routes for ``prefix`` by the region whose speaker sent them."""
        assert self.bird is not None
        by_addr = {speaker_address(i): n for i, n in enumerate(self.names)}
        return {by_addr.get(r.from_address, r.from_address): r for r in await self.bird.routes(prefix)}

    async def wait_routes(self, pred: Any, timeout: float = 10.0, poll_s: float = 0.005,
                          prefix: str = PREFIX) -> float:
        """Seconds until ``pred(routes by region)`` holds for ``prefix``. Raises ``TimeoutError``
        (naming the logs)."""
        t0 = time.monotonic()
        seen: dict[str, BirdRoute] = {}
        while time.monotonic() - t0 < timeout:
            seen = await self.routes(prefix)
            if pred(seen):
                return time.monotonic() - t0
            await asyncio.sleep(poll_s)
        raise TimeoutError(f"BIRD's routes did not change as expected within {timeout}s: {seen}; logs in {self.root}")

    async def wait_sessions(self, timeout: float = 20.0) -> None:
        """Until every region's ExaBGP has an established session with BIRD."""
        assert self.bird is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.bird.sessions()
            if len(s) == self.regions and all(v == "Established" for v in s.values()):
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"BGP sessions not established in {timeout}s: {self.bird.sessions()}; logs in {self.root}")

    async def start(self) -> None:
        (self.root / "bird").mkdir(parents=True, exist_ok=True)
        self.bird = Bird(speakers=self.regions, dir=self.root / "bird").start()
        self.fleet_ports = {n: free_port() for n in self.names}
        self.write_regions()
        for n in self.names:
            self.start_fleet(n)
        for n in self.names:
            await self.wait_fleet(n)
        for n in self.names:
            self.start_agent(n)
        if self.controller:
            policy = self.write_policy()
            self.dns_port = free_port()
            self._spawn("controller", self._gtm("controller", "--policies", str(policy), "--regions",
                                                str(self.root / "regions"), "--api-listen", "off",
                                                "--dns-listen", f"127.0.0.1:{self.dns_port}"))
        await self.wait_sessions()

    async def close(self) -> None:
        for key, p in self.procs.items():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.terminate() if key.startswith("agent-") else p.kill()
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for n in self.names:  # an ExaBGP an agent could not stop (agent SIGKILLed in a test)
            with contextlib.suppress(OSError, ValueError):
                os.kill(self.exabgp_pid(n), signal.SIGKILL)
        if self.bird is not None:
            self.bird.stop()

