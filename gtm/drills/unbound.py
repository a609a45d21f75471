"""A real caching resolver for a drill's clients: Debian's Unbound, started by the drill.

Clients do not ask the authoritative servers; they ask a resolver that caches answers for their
TTL, so after a routing change a client keeps the old answer until its cached copy expires. A
drill measures that: :class:`Unbound` runs ``unbound -d`` in the foreground with a config in a
temp dir, a stub zone for the service's zone pointing at the authoritative servers
(``host@port``), and nothing else (every other name is refused; no root, no internet).

Config choices (``unbound.conf(5)``, Unbound 1.17):

* no daemonize, chroot, username, syslog, pidfile or remote control: a plain child process
  whose stderr is the log file;
* ``do-not-query-localhost: no`` (without it Unbound refuses to send queries to 127.0.0.0/8
  stub addresses) and ``access-control`` allowing loopback clients;
* ``module-config: "subnetcache iterator"`` with ``send-client-subnet: <stub host>`` for each
  authoritative server, ``client-subnet-always-forward: yes`` and
  ``max-client-subnet-ipv4: 24``: the client's EDNS Client Subnet option is forwarded (cut to
  /24) and the answer cached per subnet at the scope the server gave;
* TTLs as published: ``cache-min-ttl: 0``, ``prefetch: no``, ``serve-expired: no`` (each of
  these would keep an old answer past its TTL or refresh it early); ``qname-minimisation: no``
  (one question for the service name, not a walk down the labels); no validator (no trust
  anchor needed for a private zone).

Verified by experiment (``tests/drills/test_unbound.py``, Unbound 1.17.1, dnspython 2.9): a
query with ECS 100.96.5.0/24 (an EU network) and one with ECS 100.64.1.0/24 (a US network)
through Unbound each get their own segment's answer from the embedded DNS, which receives the
subnets; a second query within the TTL is served from the cache with the TTL counted down
(3 s published → 2 or less a second later) and keeps the old answer after the plan
changed, until the TTL runs out; a /32 in the same /24 is a cache hit. Beyond the recipe in
RECIPES-components.md (which found that without ``send-client-subnet`` the server sees no ECS):
with ``client-subnet-always-forward: yes`` a client's own ECS option is forwarded even to a
server not listed in ``send-client-subnet`` (the man page: "the address check is skipped when
the client query contains an ECS record", and the regular cache is skipped too; checked by
removing the ``send-client-subnet`` lines: the EU answer still came back). The list still
matters for clients that send no ECS: Unbound then derives one from their source address
(127.0.0.0/24 here) only for listed servers. The ECS cache keeps at most 100 subnets per name
and address family: a drill's populations stay well below that.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from gtm.errors import StartupError
from gtm.log import get_logger

__all__ = ["Unbound", "find_unbound", "render_config"]

log = get_logger("drills.unbound")

DEFAULT_BINARIES = ("unbound", "/usr/sbin/unbound")
"""Where Unbound is looked for: on PATH, then Debian's location."""
PORT_RANGE = (20000, 32000)
"""Ports tried when none is given: below the ephemeral range (an outgoing connection's port
never takes it); another is tried when the chosen one is taken."""
BIND_ATTEMPTS = 8
"""Ports tried before giving up when none is given."""
READY_POLL_S = 0.05
"""How often start-up asks whether the resolver answers, seconds."""
STOP_TIMEOUT_S = 5.0
"""How long ``stop`` waits after SIGTERM before SIGKILL, seconds."""


def find_unbound(binary: str | None = None) -> str:
    """The path of the Unbound binary: ``binary`` if given, else on PATH or /usr/sbin/unbound.

    Raises:
        StartupError: not found (the message says how to install it).
    """
    for candidate in (binary,) if binary else DEFAULT_BINARIES:
        path = shutil.which(candidate)
        if path:
            return path
    raise StartupError(f"unbound not found ({binary or ' or '.join(DEFAULT_BINARIES)}): install it with "
                       "`apt-get install unbound` (Debian/Ubuntu), or name the operator's resolvers "
                       "with --resolver")


def render_config(directory: Path, zone: str, stub_addrs: list[tuple[str, int]], host: str, port: int) -> str:
    """The ``unbound.conf`` text (see the module doc for each choice).

    Args:
        directory: Unbound's working directory.
        zone: the zone served by the stubs, e.g. ``gtm.example.com``.
        stub_addrs: the authoritative servers, ``(host, port)``.
        host: the address Unbound listens on.
        port: the port it listens on (UDP and TCP).

    Raises:
        ValueError: no stub address, or a zone or address with characters Unbound's config
            syntax cannot carry.
    """
    if not stub_addrs:
        raise ValueError("Unbound needs at least one stub address")
    for value in (zone, host, *(h for h, _p in stub_addrs)):
        if not re.fullmatch(r"[A-Za-z0-9.:_-]+", value):
            raise ValueError(f"unbound: {value!r} is not a plain name or address")
    name = zone.rstrip(".") + "."
    senders = sorted({h for h, _p in stub_addrs})
    lines = [
        "server:",
        f'    directory: "{directory}"',
        '    username: ""',
        '    chroot: ""',
        '    pidfile: ""',
        "    use-syslog: no",
        '    logfile: ""',
        "    verbosity: 1",
        "    log-queries: no",
        f"    interface: {host}",
        f"    port: {port}",
        "    do-ip4: yes",
        f"    do-ip6: {'yes' if ':' in host else 'no'}",
        "    do-udp: yes",
        "    do-tcp: yes",
        "    num-threads: 1",
        "    do-not-query-localhost: no",
        "    access-control: 127.0.0.0/8 allow",
        "    access-control: ::1/128 allow",
        '    module-config: "subnetcache iterator"',
        *(f"    send-client-subnet: {h}" for h in senders),
        "    client-subnet-always-forward: yes",
        "    max-client-subnet-ipv4: 24",
        "    cache-min-ttl: 0",
        "    prefetch: no",
        "    serve-expired: no",
        "    qname-minimisation: no",
        '    local-zone: "." refuse',
        f'    local-zone: "{name}" transparent',
        "remote-control:",
        "    control-enable: no",
        "stub-zone:",
        f'    name: "{name}"',
        *(f"    stub-addr: {h}@{p}" for h, p in stub_addrs),
        "",
    ]
    return "\n".join(lines)


class Unbound:
    """A caching resolver process with a stub zone to the authoritative servers.

    Use as an async context manager::

        async with Unbound("gtm.example.com", [("127.0.0.1", 40123)]) as resolver:
            host, port = resolver.address

    Args:
        zone: the zone to send to the stubs, e.g. ``gtm.example.com``.
        stub_addrs: the authoritative servers, ``(host, port)`` each.
        host: the address to listen on.
        port: the port to listen on (UDP and TCP); 0 picks a free one.
        binary: the Unbound binary; None looks on PATH, then /usr/sbin/unbound.
        start_timeout_s: how long start-up waits for the resolver to answer a query for the
            zone through the stubs, seconds.

    Raises (on entry / ``start``):
        StartupError: Unbound is missing, its config is refused, it exits, or it does not
            answer for the zone within ``start_timeout_s`` (the message quotes its log).
    """

    def __init__(self, zone: str, stub_addrs: list[tuple[str, int]], *, host: str = "127.0.0.1",
                 port: int = 0, binary: str | None = None, start_timeout_s: float = 10.0) -> None:
        self.zone = zone.rstrip(".")
        self.stub_addrs = list(stub_addrs)
        self.host = host
        self.port = port
        self.binary = binary
        self.start_timeout_s = start_timeout_s
        self.version = ""
        self.dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the resolver answers on (the port is known once started)."""
        return self.host, self.port

    @property
    def log_path(self) -> Path:
        """The resolver's log file (its stderr and stdout).

        Raises:
            RuntimeError: not started.
        """
        if self.dir is None:
            raise RuntimeError("Unbound is not started")
        return self.dir / "unbound.log"

    def describe(self) -> str:
        """One line, e.g. ``unbound 1.17.1 on 127.0.0.1:5353, stub gtm.example.com → 127.0.0.1:40123``."""
        stubs = ", ".join(f"{h}:{p}" for h, p in self.stub_addrs)
        return f"unbound {self.version or '?'} on {self.host}:{self.port}, stub {self.zone} → {stubs}"

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the log file ("" before start)."""
        if self.dir is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    async def start(self) -> None:
        """Write the config, start Unbound and wait until it answers for the zone.

        Raises:
            StartupError: see the class doc.
            RuntimeError: already started.
        """
        if self._proc is not None:
            raise RuntimeError("Unbound is already started")
        binary = find_unbound(self.binary)
        self.version = await asyncio.to_thread(_version, binary)
        self.dir = Path(tempfile.mkdtemp(prefix="gtm-unbound-"))
        ports = [self.port] if self.port else random.sample(range(*PORT_RANGE), BIND_ATTEMPTS)
        for attempt, port in enumerate(ports):
            self.port = port
            conf = self.dir / "unbound.conf"
            conf.write_text(render_config(self.dir, self.zone, self.stub_addrs, self.host, port))
            await self._check_config(binary, conf)
            with open(self.log_path, "ab") as logf:
                self._proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=logf, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                await self._wait_ready()
                break
            except StartupError:
                exited = self._proc.poll() is not None
                await self.stop()
                bind_failed = "can't bind" in self.log_tail() or "could not open ports" in self.log_tail()
                if not (exited and bind_failed) or attempt == len(ports) - 1:
                    raise
                log.info("start: port %d taken; trying another", port)
        log.info("start: %s", self.describe())

    @staticmethod
    async def _check_config(binary: str, conf: Path) -> None:
        """Run ``unbound-checkconf`` beside ``binary`` when it exists.

        Raises:
            StartupError: the config is refused.
        """
        checker = Path(binary).with_name("unbound-checkconf")
        if not checker.exists():
            return
        check = await asyncio.to_thread(subprocess.run, [str(checker), str(conf)], capture_output=True,
                                        text=True, check=False)
        if check.returncode != 0:
            raise StartupError(f"unbound-checkconf refused the config {conf}: "
                               f"{(check.stderr or check.stdout).strip()[:500]}")

    async def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        query = dns.message.make_query(self.zone, dns.rdatatype.SOA, flags=dns.flags.RD)
        last = "no answer yet"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise StartupError(f"unbound exited with code {code}; its log ({self.log_path}) ends:\n"
                                   f"{self.log_tail()}")
            try:
                resp = await dns.asyncquery.udp(query, self.host, timeout=0.5, port=self.port)
            except (dns.exception.DNSException, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.rcode() == dns.rcode.NOERROR:
                    return
                last = f"rcode {dns.rcode.to_text(resp.rcode())}"
            await asyncio.sleep(READY_POLL_S)
        raise StartupError(f"unbound on {self.host}:{self.port} did not answer for {self.zone} through "
                           f"{self.stub_addrs} within {self.start_timeout_s:g}s ({last}); log {self.log_path}:\n"
                           f"{self.log_tail()}")

    async def stop(self) -> None:
        """Stop the process: SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``. Idempotent; keeps the
        temp dir (config and log) for a post-mortem."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, STOP_TIMEOUT_S)

    async def __aenter__(self) -> Unbound:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


def _version(binary: str) -> str:
    """Unbound's version (``unbound -V``'s first line), or "" when it cannot tell."""
    try:
        out = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    m = re.search(r"Version\s+(\S+)", out)
    return m.group(1) if m else ""
