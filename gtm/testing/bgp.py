"""A private BIRD 2 router on loopback for the anycast tests, drill and benchmark.

:class:`Bird` starts ``bird`` (Debian ``bird2``; ``scripts/ensure-bird.sh`` installs it) with one
passive BGP protocol per region speaker, all on ``127.0.0.2`` and a spare port (``strict bind``:
never 0.0.0.0:179), its control socket in a temporary directory, and no ``kernel`` protocol (it
would export routes into the host's table). Each region's ExaBGP peers from its own loopback
address (``speaker_address``: 127.0.0.11, 127.0.0.12, ...; every 127/8 address is local on Linux).
The import filter applies RFC 8326: a route with GRACEFUL_SHUTDOWN (65535:0) gets local
preference 0. :meth:`Bird.routes` reads ``birdc show route PREFIX all`` into :class:`BirdRoute`.

Routes show as ``unreachable`` (BIRD ignores ``lo``, so a loopback or documentation next hop does
not resolve); every attribute is still there, and the best route is marked.

:func:`bgp_region` writes the ``bgp`` section a region's inventory needs to peer with it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gtm.testing.ports import free_port
from gtm.testing.procs import stop_process

__all__ = ["BIRD_ADDRESS", "BIRD_ASN", "Bird", "BirdRoute", "bgp_region", "speaker_address"]

BIRD_ADDRESS = "127.0.0.2"
BIRD_ASN = 65000


def speaker_address(index: int) -> str:
    """The loopback address the ``index``-th region's ExaBGP peers from (0 → 127.0.0.11)."""
    return f"127.0.0.{11 + index}"


def bgp_region(index: int, bird_port: int, *, next_hop: str | None = None,
               communities: tuple[str, ...] = ()) -> dict[str, Any]:
    """The inventory ``bgp`` section of the ``index``-th region: AS 65001+index, peering from
    ``speaker_address(index)`` with the BIRD on ``bird_port``; next hop 192.0.2.(101+index)."""
    return {
        "local_asn": 65001 + index,
        "local_address": speaker_address(index),
        "next_hop": next_hop or f"192.0.2.{101 + index}",
        "peers": [{"address": BIRD_ADDRESS, "asn": BIRD_ASN, "port": bird_port}],
        "communities": list(communities),
    }


@dataclass(frozen=True, slots=True)
class BirdRoute:
    """One route in BIRD's table.

    Attributes:
        prefix: the prefix.
        protocol: the BGP protocol it came from (``r0``, ``r1``, ... per region index).
        from_address: the speaker's address.
        best: BIRD's preferred route for the prefix.
        as_path: the AS path.
        next_hop: BGP.next_hop.
        med: BGP.med, or None.
        local_pref: BGP.local_pref (0 for a GRACEFUL_SHUTDOWN route).
        communities: ``ASN:value`` communities.
    """

    prefix: str
    protocol: str
    from_address: str
    best: bool
    as_path: tuple[int, ...]
    next_hop: str
    med: int | None
    local_pref: int | None
    communities: tuple[str, ...]

    @property
    def prepend_count(self) -> int:
        """Extra copies of the first ASN at the head of the path (the sender's prepends)."""
        n = 0
        while n + 1 < len(self.as_path) and self.as_path[n + 1] == self.as_path[0]:
            n += 1
        return n

    @property
    def graceful_shutdown(self) -> bool:
        return "65535:0" in self.communities


_HEAD = re.compile(r"^(?P<prefix>\S+)?\s+\S+\s+\[(?P<proto>\S+) [^\]]*? from (?P<addr>\S+)\]\s*(?P<best>\*)?")


def parse_routes(text: str) -> list[BirdRoute]:
    """Routes from ``birdc show route PREFIX all`` output."""
    out: list[BirdRoute] = []
    cur: dict[str, Any] | None = None
    prefix = ""

    def flush() -> None:
        if cur is not None:
            out.append(BirdRoute(**cur))

    for line in text.splitlines():
        m = _HEAD.match(line)
        if m and ("unreachable" in line or "unicast" in line or " via " in line):
            flush()
            prefix = m.group("prefix") or prefix
            cur = {"prefix": prefix, "protocol": m.group("proto"), "from_address": m.group("addr"),
                   "best": m.group("best") is not None, "as_path": (), "next_hop": "", "med": None,
                   "local_pref": None, "communities": ()}
            continue
        if cur is None:
            continue
        s = line.strip()
        key, _, value = s.partition(":")
        value = value.strip()
        if key == "BGP.as_path":
            cur["as_path"] = tuple(int(x) for x in value.split())
        elif key == "BGP.next_hop":
            cur["next_hop"] = value.split()[0] if value else ""
        elif key == "BGP.med":
            cur["med"] = int(value)
        elif key == "BGP.local_pref":
            cur["local_pref"] = int(value)
        elif key == "BGP.community":
            cur["communities"] = tuple(f"{a}:{b}" for a, b in re.findall(r"\((\d+),\s*(\d+)\)", value))
    flush()
    return out


@dataclass
class Bird:
    """A BIRD 2 process peering with ``speakers`` region speakers. Use ``start``/``stop`` or as
    a context manager.

    Args:
        speakers: how many region speakers (ExaBGP) may peer (protocols ``r0``..``r{n-1}``).
        port: BGP port on 127.0.0.2; 0 picks a spare one.
    """

    speakers: int = 1
    port: int = 0
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gtm-bird-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ctl(self) -> Path:
        return self.dir / "bird.ctl"

    def config(self) -> str:
        lines = [f"router id {BIRD_ADDRESS};", f'log "{self.dir / "bird.log"}" all;', "protocol device { }"]
        for i in range(self.speakers):
            lines += [
                f"protocol bgp r{i} {{",
                f"    local {BIRD_ADDRESS} port {self.port} as {BIRD_ASN};",
                f"    neighbor {speaker_address(i)} as {65001 + i};",
                "    strict bind; passive; multihop; hold time 9;",
                "    ipv4 {",
                "        import filter { if (65535, 0) ~ bgp_community then bgp_local_pref = 0; accept; };",
                "        export none;",
                "    };",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 5.0) -> Bird:
        """Start and wait for the control socket. Raises ``RuntimeError`` (no ``bird``, or it died)."""
        binary = shutil.which("bird") or ("/usr/sbin/bird" if Path("/usr/sbin/bird").exists() else None)
        if binary is None:
            raise RuntimeError("bird not found; run scripts/ensure-bird.sh (Debian package bird2)")
        self.port = self.port or free_port()
        conf = self.dir / "bird.conf"
        conf.write_text(self.config())
        with open(self.dir / "bird.err", "wb") as err:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([binary, "-f", "-c", str(conf), "-s", str(self.ctl), "-P",
                                          str(self.dir / "bird.pid")], stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ctl.exists() and self._birdc("show status").returncode == 0:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"bird did not start: {(self.dir / 'bird.err').read_text(errors='replace')[-500:]}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def _birdc(self, *args: str) -> subprocess.CompletedProcess[str]:
        birdc = shutil.which("birdc") or "/usr/sbin/birdc"
        return subprocess.run([birdc, "-s", str(self.ctl), *args], capture_output=True, text=True, timeout=5)

    async def routes(self, prefix: str) -> list[BirdRoute]:
        """Every route BIRD has for exactly ``prefix`` (``birdc show route PREFIX all``)."""
        birdc = shutil.which("birdc") or "/usr/sbin/birdc"
        proc = await asyncio.create_subprocess_exec(birdc, "-s", str(self.ctl), "show", "route", prefix, "all",
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate()
        return parse_routes(out.decode(errors="replace"))

    def sessions(self) -> dict[str, str]:
        """State of each protocol (``r0`` → ``Established`` / ``Passive`` / ...)."""
        out: dict[str, str] = {}
        for line in self._birdc("show", "protocols").stdout.splitlines():
            parts = line.split()
            if parts and re.fullmatch(r"r\d+", parts[0]):
                out[parts[0]] = parts[-1]
        return out

    async def wait(self, prefix: str, pred: Any, timeout: float = 10.0, poll_s: float = 0.005) -> float:
        """Poll BIRD's routes for ``prefix`` until ``pred(routes)`` holds; returns the seconds
        it took. Raises ``TimeoutError`` with the last routes seen."""
        t0 = time.monotonic()
        routes: list[BirdRoute] = []
        while time.monotonic() - t0 < timeout:
            routes = await self.routes(prefix)
            if pred(routes):
                return time.monotonic() - t0
            await asyncio.sleep(poll_s)
        raise TimeoutError(f"BIRD's routes for {prefix} did not change as expected in {timeout}s: {routes}")

    def __enter__(self) -> Bird:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
