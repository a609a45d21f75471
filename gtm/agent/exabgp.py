"""ExaBGP 5.x as the region agent's BGP speaker: checked commands, config, process and API session.

How the agent talks to ExaBGP (its documented external-process API, ``encoder text``):

* The agent spawns ``exabgp server CONF`` itself (:class:`ExaBgpProcess`) with a config
  generated from the inventory's ``Region.bgp`` (:func:`exabgp_config`: one ``neighbor`` per
  peer, ``api { processes [ gtm ]; neighbor-changes; }``). ExaBGP in turn runs the bridge
  ``gtm/agent/exabgp_bridge.py --socket PATH`` as its ``process``: the bridge relays lines
  between ExaBGP's pipes and the agent's Unix socket (:class:`ExaBgpApi` listens there).
  When ExaBGP dies the agent starts it again; each new bridge connection is a new ExaBGP
  whose routing table is empty, and the agent re-sends the full desired state
  (``ExaBgpApi.connections`` grows by one).
* Commands go one line at a time, each answered by ExaBGP with ``done`` or ``error``
  (``exabgp.api.ack``, on by default) before the next one is written (:meth:`ExaBgpApi.send`,
  with a timeout; a missing acknowledgement drops the connection, so a late ``done`` can never
  be taken for the next command's). Measured with ExaBGP 5.0.15: the ack comes 2-10 ms after
  the command; ``withdraw`` of a route ExaBGP never had is ``done``; a /33 or an unknown
  command is ``error``.
* Events arrive on the same stream: ``neighbor 127.0.0.2 connected`` / ``... up`` /
  ``... down ...`` (the session to that peer) and blank lines; they update
  ``ExaBgpApi.peers``. A session coming up (after a peer reset or an ExaBGP reload) also makes
  the speaker send its full state again; ExaBGP would re-advertise its own table anyway, so this
  only costs a few acknowledged lines and guards against a reload that changed that table.

Every value is checked before it is formatted (:func:`announce_command`): the prefix and the
next hop through ``ipaddress``, ASNs and MED as integers in range, communities against
``ASN:value``; the finished line is refused if it holds any control character, so nothing from
the plan or the inventory can inject a second command.

ExaBGP here runs as the agent's own user (``exabgp_daemon_user``: otherwise, as root, it drops
to ``nobody`` after forking the bridge), with its named-pipe CLI off (``exabgp_api_cli=false``:
it would otherwise attach to pipes it finds in /run) and its log in the state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import pwd
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gtm.errors import PermanentProviderError, TemporaryProviderError
from gtm.log import get_logger
from gtm.models.region import BgpSide

log = get_logger("agent.exabgp")

GRACEFUL_SHUTDOWN = "65535:0"
"""The well-known GRACEFUL_SHUTDOWN community (RFC 8326): receivers lower the route's
preference to 0, so traffic moves to other paths before the route is withdrawn."""

PROCESS_NAME = "gtm"
"""Name of the API process (the bridge) in the generated ExaBGP config."""

_COMMUNITY = re.compile(r"^(\d{1,5}):(\d{1,5})$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
BRIDGE = Path(__file__).with_name("exabgp_bridge.py")


@dataclass(frozen=True, slots=True)
class Route:
    """One route as the speaker announces it.

    Attributes:
        prefix: the prefix (CIDR).
        next_hop: the next-hop address.
        as_path: the whole AS path to send (the local ASN repeated for prepends); empty: ExaBGP's
            default (the local ASN once).
        med: MULTI_EXIT_DISC, or None to send none.
        communities: ``ASN:value`` communities, sorted.
    """

    prefix: str
    next_hop: str
    as_path: tuple[int, ...] = ()
    med: int | None = None
    communities: tuple[str, ...] = ()

    @property
    def prepend(self) -> int:
        """Extra copies of the local ASN on the path (0 when the path is the default)."""
        return max(0, len(self.as_path) - 1)


def check_prefix(prefix: str) -> str:
    """The prefix in canonical form. Raises ``PermanentProviderError`` when it is not a network
    (host bits set, a /33, text)."""
    try:
        return str(ipaddress.ip_network(prefix, strict=True))
    except ValueError as exc:
        raise PermanentProviderError(f"not a prefix: {prefix!r}: {exc}") from exc


def check_community(community: str) -> str:
    """An ``ASN:value`` community with both parts 0-65535. Raises ``PermanentProviderError``."""
    m = _COMMUNITY.match(community)
    if m is None or int(m.group(1)) > 65535 or int(m.group(2)) > 65535:
        raise PermanentProviderError(f"not a community (ASN:value, both 0-65535): {community!r}")
    return f"{int(m.group(1))}:{int(m.group(2))}"


def _checked_line(line: str) -> str:
    if _CONTROL.search(line):
        raise PermanentProviderError(f"refusing a command with a control character: {line!r}")
    return line


def announce_command(route: Route) -> str:
    """``announce route PREFIX next-hop NH [med M] [community [..]] [as-path [..]]``.

    Raises:
        PermanentProviderError: a value is malformed (prefix, next hop, ASN, MED, community)
            or the line would hold a control character.
    """
    prefix = check_prefix(route.prefix)
    try:
        nh = str(ipaddress.ip_address(route.next_hop))
    except ValueError as exc:
        raise PermanentProviderError(f"not a next-hop address: {route.next_hop!r}") from exc
    parts = ["announce", "route", prefix, "next-hop", nh]
    if route.med is not None:
        if not isinstance(route.med, int) or not 0 <= route.med <= 4_294_967_295:
            raise PermanentProviderError(f"MED out of range 0-4294967295: {route.med!r}")
        parts += ["med", str(route.med)]
    if route.communities:
        parts += ["community", "[" + " ".join(check_community(c) for c in route.communities) + "]"]
    if route.as_path:
        for asn in route.as_path:
            if not isinstance(asn, int) or not 1 <= asn <= 4_294_967_295:
                raise PermanentProviderError(f"ASN out of range 1-4294967295: {asn!r}")
        parts += ["as-path", "[" + " ".join(str(a) for a in route.as_path) + "]"]
    return _checked_line(" ".join(parts))


def withdraw_command(prefix: str) -> str:
    """``withdraw route PREFIX``. Raises ``PermanentProviderError`` for a malformed prefix."""
    return _checked_line(f"withdraw route {check_prefix(prefix)}")


def exabgp_config(side: BgpSide, socket_path: Path, python: str = sys.executable) -> str:
    """ExaBGP configuration for a region's BGP side: the bridge process and one neighbor per
    peer (``connect PORT``: ExaBGP dials out, it does not listen). Hold time 9 s (ExaBGP's
    default is 180 s: a dead speaker would keep routes for 3 minutes).

    Raises:
        PermanentProviderError: an address holds characters that cannot be in a config.
    """
    router_id = side.router_id or side.local_address
    out = [
        f"process {PROCESS_NAME} {{",
        f"    run {python} {BRIDGE} --socket {socket_path};",
        "    encoder text;",
        "}",
    ]
    for peer in side.peers:
        out += [
            f"neighbor {ipaddress.ip_address(peer.address)} {{",
            f"    router-id {ipaddress.IPv4Address(router_id)};",
            f"    local-address {ipaddress.ip_address(side.local_address)};",
            f"    local-as {int(side.local_asn)};",
            f"    peer-as {int(peer.asn)};",
            f"    connect {int(peer.port)};",
            "    hold-time 9;",
            f"    api {{ processes [ {PROCESS_NAME} ]; neighbor-changes; }}",
            "}",
        ]
    text = "\n".join(out) + "\n"
    if any(_CONTROL.search(line) for line in text.splitlines()):
        raise PermanentProviderError("ExaBGP config would hold a control character")
    return text


@dataclass
class PeerSession:
    """A BGP session of the speaker as ExaBGP reports it.

    Attributes:
        address: the peer's address.
        up: True once ExaBGP said ``up``; False after ``down`` or a lost bridge.
        event: the last event line about it.
        changed_at: unix seconds of that event.
    """

    address: str
    up: bool = False
    event: str = ""
    changed_at: float = 0.0


@dataclass
class ExaBgpApi:
    """The agent's end of the ExaBGP API: a Unix socket the bridge connects to.

    Args:
        socket_path: where to listen (created; an old file there is removed).
        on_change: called (no arguments) when a bridge connects or goes away and when a peer
            session changes, so the speaker reconciles at once.

    Attributes:
        connections: bridge connections accepted so far; each is a fresh ExaBGP (or a fresh
            bridge), which gets the full desired state again.
        peers: BGP sessions by peer address.
        last_ack_at: unix seconds of the last acknowledgement (``done`` or ``error``).
        sessions_up: how often a peer session came up; the speaker sends its full state again
            then too (a reload that restarted the session must not leave a stale route).
    """

    socket_path: Path
    on_change: Callable[[], None] = lambda: None
    connections: int = 0
    sessions_up: int = 0
    peers: dict[str, PeerSession] = field(default_factory=dict)
    last_ack_at: float | None = None
    _server: asyncio.AbstractServer | None = None
    _writer: asyncio.StreamWriter | None = None
    _acks: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def connected(self) -> bool:
        """Whether a bridge (so an ExaBGP) is connected now."""
        return self._writer is not None and not self._writer.is_closing()

    async def start(self) -> None:
        """Listen on ``socket_path``."""
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.socket_path))

    async def aclose(self) -> None:
        """Stop listening and drop the bridge connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self._drop()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def _drop(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for p in self.peers.values():
            if p.up:
                p.up, p.event, p.changed_at = False, "bridge to ExaBGP lost", time.time()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._drop()  # an older bridge belongs to a dead ExaBGP
        self._writer = writer
        self.connections += 1
        self._acks = asyncio.Queue()
        log.info("exabgp: bridge connected (connection %d); re-sending the desired state", self.connections)
        self.on_change()
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                self._line(raw.decode(errors="replace").strip())
        except (ConnectionError, OSError):
            pass
        finally:
            if self._writer is writer:
                self._drop()
                log.warning("exabgp: bridge disconnected (ExaBGP stopped or restarted)")
                self.on_change()

    def _line(self, line: str) -> None:
        if not line:
            return
        if line in ("done", "error"):
            self.last_ack_at = time.time()
            self._acks.put_nowait(line)
            return
        words = line.split()
        if len(words) >= 3 and words[0] == "neighbor":
            peer = self.peers.setdefault(words[1], PeerSession(words[1]))
            state = words[2]
            if state in ("up", "down", "connected"):
                was = peer.up
                peer.up = state == "up"
                peer.event, peer.changed_at = line[:300], time.time()
                if was != peer.up:
                    log.info("exabgp: session to %s %s", words[1], "up" if peer.up else state)
                    self.sessions_up += int(peer.up)
                    self.on_change()
            return
        log.debug("exabgp: %s", line[:300])

    async def send(self, command: str, timeout_s: float) -> str:
        """Write one command and wait for its acknowledgement.

        Args:
            command: a line from :func:`announce_command` / :func:`withdraw_command`.
            timeout_s: how long to wait for ``done``/``error``, seconds.

        Returns:
            ``done`` or ``error``.

        Raises:
            TemporaryProviderError: no bridge is connected, it went away, or no acknowledgement
                came in time (the connection is then dropped: a late ack must not be taken for
                the next command's).
            PermanentProviderError: the command holds a control character.
        """
        _checked_line(command)
        async with self._lock:
            writer = self._writer
            if writer is None or writer.is_closing():
                raise TemporaryProviderError("ExaBGP is not connected")
            acks = self._acks
            while not acks.empty():  # stray acks of an earlier, timed-out command
                acks.get_nowait()
            try:
                writer.write(command.encode() + b"\n")
                await writer.drain()
                async with asyncio.timeout(timeout_s):
                    return await acks.get()
            except (ConnectionError, OSError) as exc:
                self._drop()
                raise TemporaryProviderError(f"ExaBGP connection lost: {exc}") from exc
            except TimeoutError as exc:
                self._drop()
                self.on_change()
                raise TemporaryProviderError(f"no acknowledgement from ExaBGP within {timeout_s}s") from exc


@dataclass
class ExaBgpProcess:
    """``exabgp server CONF`` run and restarted by the agent.

    Args:
        side: the region's BGP side (the config is generated from it).
        state_dir: where the config, the API socket, ExaBGP's log and pid file live.
        exabgp_bin: the ``exabgp`` executable (default: beside this Python, else on PATH).
        restart_s: pause before starting ExaBGP again after it exited, seconds.

    Attributes:
        starts: how often ExaBGP was started.
        pid: the running ExaBGP's process id, or None.
    """

    side: BgpSide
    state_dir: Path
    exabgp_bin: str | None = None
    restart_s: float = 0.5
    starts: int = 0
    _proc: asyncio.subprocess.Process | None = None

    @property
    def socket_path(self) -> Path:
        return self.state_dir / "api.sock"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "exabgp.pid"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    def binary(self) -> str:
        """The ``exabgp`` executable. Raises ``PermanentProviderError`` when there is none."""
        if self.exabgp_bin:
            return self.exabgp_bin
        beside = Path(sys.executable).parent / "exabgp"
        if beside.exists():
            return str(beside)
        found = shutil.which("exabgp")
        if found is None:
            raise PermanentProviderError("exabgp not found: pip install exabgp, or pass --exabgp-bin")
        return found

    def _stop_leftover(self) -> None:
        """Stop an ExaBGP a previous agent run left behind (killed agent), by its pid file."""
        try:
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"exabgp" in cmdline and str(self.state_dir).encode() in cmdline:
            log.warning("exabgp: stopping ExaBGP pid %d left by an earlier agent", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def start(self) -> None:
        """Write the config and start ExaBGP. Raises ``PermanentProviderError`` (no binary)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        conf = self.state_dir / "exabgp.conf"
        conf.write_text(exabgp_config(self.side, self.socket_path))
        env = {
            **os.environ,
            "exabgp_daemon_user": pwd.getpwuid(os.getuid()).pw_name,
            "exabgp_api_cli": "false",
            "exabgp_api_ack": "true",
            "exabgp_log_destination": str(self.state_dir / "exabgp.log"),
        }
        with open(self.state_dir / "exabgp.out", "ab") as out:
            self._proc = await asyncio.create_subprocess_exec(
                self.binary(), "server", str(conf), stdin=asyncio.subprocess.DEVNULL,
                stdout=out, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
            )
        self.starts += 1
        self.pid_path.write_text(f"{self._proc.pid}\n")
        log.info("exabgp: started pid %d (%s)", self._proc.pid, conf)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep ExaBGP running until ``stop`` is set, then stop it (SIGTERM: it sends a Cease
        to every peer, which drops its routes)."""
        try:
            while not stop.is_set():
                if self._proc is None or self._proc.returncode is not None:
                    await self.start()
                assert self._proc is not None
                waiter = asyncio.ensure_future(self._proc.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if waiter.done() and not stop.is_set():
                    log.warning("exabgp: pid %d exited with code %s; starting it again in %ss",
                                self._proc.pid, self._proc.returncode, self.restart_s)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.restart_s)
                else:
                    waiter.cancel()
        finally:
            await self.terminate()

    async def terminate(self, grace_s: float = 5.0) -> None:
        """Stop ExaBGP by its own pid: SIGTERM, then SIGKILL after ``grace_s`` seconds."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
