"""A throw-away BIND 9 primary on loopback, for tests, the provider drill and benchmarks.

``BindServer`` writes a ``named.conf`` with a freshly generated TSIG key, one primary zone per
name given (SOA, NS and the name server's address only), and runs ``named -g`` (foreground,
logging to a file in its directory) on ``127.0.0.1`` and a free port below 32768. The key is
granted dynamic updates (``update-policy { grant KEY zonesub ANY; }``) and zone transfers
(``allow-transfer { key KEY; }``); unsigned updates and transfers are refused. The secret is
written to ``tsig.secret`` (mode 0600) so an ``Rfc2136Provider`` can read it with
``tsig_secret_file``; ``provider_options()`` returns those options.

Two test aids: ``refuse_updates`` names zones whose ``update-policy`` grants only a second key
(``<key>-other``), so this key's updates there are REFUSED while transfers still work (a zone
"whose key is not allowed"); ``statistics`` opens BIND's JSON statistics channel on another free
port, and ``opcode_counts()`` reads how many messages of each opcode (``UPDATE``, ``QUERY``) the
server received, counted by the server itself.

Usage::

    with BindServer.start(["gtm.example.com"]) as bind:
        provider = Rfc2136Provider("bind", owner_id="gtm", zones=bind.zones, **bind.provider_options())

``named`` is looked up on ``PATH`` and in ``/usr/sbin``; ``scripts/ensure-bind.sh`` installs it.
The server is stopped by its own PID (``stop()`` or leaving the ``with`` block).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from gtm.testing.ports import free_port
from gtm.testing.procs import stop_process

__all__ = ["BindServer", "BindStartError", "find_named"]

_KEY_BYTES = {"hmac-sha1": 20, "hmac-sha224": 28, "hmac-sha256": 32, "hmac-sha384": 48, "hmac-sha512": 64}


class BindStartError(RuntimeError):
    """``named`` is missing, rejected its configuration or did not answer in time."""


def find_named() -> str | None:
    """Path of the ``named`` binary, or None (it lives in ``/usr/sbin`` on Debian)."""
    return shutil.which("named") or next(
        (p for p in ("/usr/sbin/named", "/usr/local/sbin/named") if os.access(p, os.X_OK)), None
    )


@dataclass
class BindServer:
    """A running (or runnable) ``named`` with one TSIG key and primary zones.

    Attributes:
        zones: the zones served, normalised (lower case, no trailing dot).
        host: listening address.
        port: listening port (UDP and TCP).
        key_name: the TSIG key's name.
        algorithm: the TSIG algorithm (``hmac-sha256``...).
        secret: the key's base64 secret (tests sign with it; never log it).
        directory: config, zone files, journals and ``named.log``.
    """

    zones: tuple[str, ...]
    host: str
    port: int
    key_name: str
    algorithm: str
    secret: str
    directory: Path
    refuse_updates: tuple[str, ...] = ()
    stats_port: int | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _own_dir: bool = field(default=False, repr=False)

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        zones: Sequence[str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        key_name: str = "gtm-key",
        algorithm: str = "hmac-sha256",
        directory: str | Path | None = None,
        ready_timeout_s: float = 10.0,
        attempts: int = 3,
        refuse_updates: Sequence[str] = (),
        statistics: bool = False,
    ) -> BindServer:
        """Write the configuration and start ``named``; returns once it answers for every zone.

        Args:
            zones: zone names (at least one).
            host: loopback address to listen on.
            port: port; default a free one below 32768 (retried on a collision).
            key_name: TSIG key name.
            algorithm: TSIG algorithm.
            directory: where to write; default a new temporary directory removed by ``stop()``.
            ready_timeout_s: how long to wait for the first answer.
            attempts: start attempts (each with a new port when ``port`` is None).
            refuse_updates: zones (among ``zones``) whose updates this key may not make: they
                answer REFUSED to it (transfers are still allowed).
            statistics: open the JSON statistics channel (``stats_port``, ``opcode_counts()``).

        Raises:
            BindStartError: ``named`` is missing, rejected the config or never answered.
        """
        if not zones:
            raise ValueError("BindServer.start: give at least one zone")
        if algorithm not in _KEY_BYTES:
            raise ValueError(f"BindServer.start: unsupported TSIG algorithm {algorithm!r}")
        normalized = tuple(z.strip().rstrip(".").lower() for z in zones)
        refused = tuple(z.strip().rstrip(".").lower() for z in refuse_updates)
        if set(refused) - set(normalized):
            raise ValueError(f"BindServer.start: refuse_updates {sorted(set(refused) - set(normalized))} not in zones")
        named = find_named()
        if named is None:
            raise BindStartError("named not found; run scripts/ensure-bind.sh (apt-get install bind9 bind9-utils)")
        own_dir = directory is None
        path = Path(tempfile.mkdtemp(prefix="gtm-bind-")) if directory is None else Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        secret = base64.b64encode(secrets.token_bytes(_KEY_BYTES[algorithm])).decode()
        server = cls(
            zones=normalized,
            host=host,
            port=port or 0,
            key_name=key_name,
            algorithm=algorithm,
            secret=secret,
            directory=path,
            refuse_updates=refused,
            _own_dir=own_dir,
        )
        last: BindStartError | None = None
        for _ in range(max(1, attempts)):
            server.port = port or free_port(host)
            server.stats_port = free_port(host) if statistics else None
            server._write_config()
            try:
                server._run(named, ready_timeout_s)
                return server
            except BindStartError as exc:
                last = exc
                server._kill()
                if port is not None:
                    break
        server.stop()
        assert last is not None
        raise last

    def _write_config(self) -> None:
        d = self.directory
        secret_file = d / "tsig.secret"
        secret_file.write_text(self.secret + "\n")
        secret_file.chmod(0o600)
        zones_conf = []
        for zone in self.zones:
            (d / f"{zone}.db").write_text(
                f"$ORIGIN {zone}.\n$TTL 300\n"
                f"@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n"
                f"@ IN NS ns1.{zone}.\n"
                f"ns1 IN A {self.host}\n"
            )
            # Remove a journal left by an earlier run in the same directory.
            (d / f"{zone}.db.jnl").unlink(missing_ok=True)
            grantee = self.other_key_name if zone in self.refuse_updates else self.key_name
            zones_conf.append(
                f'zone "{zone}" {{ type primary; file "{d}/{zone}.db"; '
                f"update-policy {{ grant {grantee} zonesub ANY; }}; "
                f"allow-transfer {{ key {self.key_name}; }}; }};"
            )
        other_secret = base64.b64encode(secrets.token_bytes(_KEY_BYTES[self.algorithm])).decode()
        stats = (
            [f"statistics-channels {{ inet {self.host} port {self.stats_port} allow {{ {self.host}; }}; }};"]
            if self.stats_port is not None
            else []
        )
        conf = "\n".join(
            [
                f'key "{self.key_name}" {{ algorithm {self.algorithm}; secret "{self.secret}"; }};',
                f'key "{self.other_key_name}" {{ algorithm {self.algorithm}; secret "{other_secret}"; }};',
                *stats,
                "options {",
                f'  directory "{d}";',
                f'  pid-file "{d}/named.pid";',
                f'  session-keyfile "{d}/session.key";',
                f'  managed-keys-directory "{d}";',
                f"  listen-on port {self.port} {{ {self.host}; }};",
                "  listen-on-v6 { none; };",
                "  recursion no;",
                "  notify no;",
                "  dnssec-validation no;",
                "  allow-query { any; };",
                "  allow-transfer { none; };",
                "};",
                "controls { };",
                "logging { channel main { file \"" + str(d / "named.log") + "\"; severity info; print-time yes; };",
                "  category default { main; }; category update { main; }; category security { main; }; };",
                *zones_conf,
                "",
            ]
        )
        (d / "named.conf").write_text(conf)
        (d / "named.conf").chmod(0o600)

    def _run(self, named: str, ready_timeout_s: float) -> None:
        conf = str(self.directory / "named.conf")
        checkconf = shutil.which("named-checkconf") or "/usr/bin/named-checkconf"
        if os.access(checkconf, os.X_OK):
            check = subprocess.run([checkconf, "-z", conf], capture_output=True, text=True, check=False)
            if check.returncode != 0:
                raise BindStartError(f"named-checkconf rejected {conf}: {check.stdout}{check.stderr}")
        stderr = open(self.directory / "named.stderr", "wb")  # noqa: SIM115 (kept open while named runs)
        try:
            self._proc = subprocess.Popen(
                [named, "-g", "-4", "-n", "1", "-c", conf], stdout=subprocess.DEVNULL, stderr=stderr,
                stdin=subprocess.DEVNULL,
            )
        finally:
            stderr.close()
        deadline = time.monotonic() + ready_timeout_s
        pending = list(self.zones)
        while pending:
            if self._proc.poll() is not None:
                raise BindStartError(f"named exited with {self._proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise BindStartError(f"named did not answer on {self.host}:{self.port} in {ready_timeout_s}s")
            try:
                q = dns.message.make_query(pending[0], dns.rdatatype.SOA)
                r = dns.query.udp(q, self.host, port=self.port, timeout=0.2)
                if r.rcode() == dns.rcode.NOERROR and r.answer:
                    pending.pop(0)
                    continue
            except (dns.exception.DNSException, OSError):
                pass
            time.sleep(0.05)

    # -- use -------------------------------------------------------------------------------

    @property
    def secret_file(self) -> Path:
        """File holding the base64 secret (mode 0600)."""
        return self.directory / "tsig.secret"

    @property
    def other_key_name(self) -> str:
        """The key that ``refuse_updates`` zones grant updates to instead of ``key_name``."""
        return f"{self.key_name}-other"

    def opcode_counts(self) -> dict[str, int]:
        """Messages received by opcode (``UPDATE``, ``QUERY``...), from BIND's statistics channel.

        Raises:
            BindStartError: the server was started without ``statistics``, or the channel did
                not answer.
        """
        if self.stats_port is None:
            raise BindStartError("opcode_counts: start the server with statistics=True")
        url = f"http://{self.host}:{self.stats_port}/json/v1/server"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                data = json.load(response)
        except (OSError, ValueError) as exc:
            raise BindStartError(f"opcode_counts: {url}: {exc}") from exc
        return {str(k): int(v) for k, v in (data.get("opcodes") or {}).items()}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def provider_options(self, **overrides: Any) -> dict[str, Any]:
        """Keyword options for ``Rfc2136Provider`` pointing at this server."""
        return {
            "server": self.host,
            "port": self.port,
            "tsig_key_name": self.key_name,
            "tsig_algorithm": self.algorithm,
            "tsig_secret_file": str(self.secret_file),
            **overrides,
        }

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of named's log and stderr (for error messages)."""
        out = []
        for name in ("named.stderr", "named.log"):
            p = self.directory / name
            if p.exists():
                out.extend(p.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(out[-lines:])

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc)

    def stop(self) -> None:
        """Stop ``named`` (by its PID) and remove the directory if this object created it."""
        self._kill()
        if self._own_dir:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.directory)

    def __enter__(self) -> BindServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
