"""moto's Route 53 with ``MOTO_FIX`` applied: in a child process or a thread (tests, drills).

moto 5.2 has three gaps that matter to the Route 53 provider, all fixed by ``MOTO_FIX`` (a
patch text, so it can be ``exec``'d in-process under ``mock_aws`` and in the server process):

- a DELETE carrying a ``SetIdentifier`` removes *every* record set of the zone with that
  identifier (``FakeZone.delete_rrset_by_id``), while Route 53 identifies a record set by name,
  type and identifier; with ``SetIdentifier`` = region that deletes other pools' and other
  installations' records. The fix gives the one record set meant a unique identifier first.
- a CREATE identical to one made before is refused even after the record set was deleted (and
  a CREATE of a key that does exist is accepted unless identical to a journaled one). The fix
  checks the key itself and lets moto UPSERT a record set that does not exist.
- a DELETE of a record set that is not there is checked against moto's journal, not the zone:
  one created and deleted since passes (and, with a ``SetIdentifier``, deletes other record sets
  with that identifier). The fix answers as Route 53 does: ``InvalidChangeBatch: [Tried to
  delete resource record set [name=..., type=...] but it was not found]``.

``MotoServer`` runs moto's own ``moto.server.main`` (what the ``moto_server`` script runs)
with ``MOTO_FIX`` applied first, on ``127.0.0.1`` and a free port below 32768::

    with MotoServer() as moto:
        client = boto3.client("route53", endpoint_url=moto.url, region_name="us-east-1")
        ...
        moto.reset()  # POST /moto-api/reset: every hosted zone gone

``ThreadedMoto`` is the same server in a thread of this process (moto's ``ThreadedMotoServer``,
``MOTO_FIX`` applied in-process and undone on ``stop()``), with the same ``url``/``reset()``/
``stop()``: for tests that need Route 53 over HTTP but not a separate process. ``MotoServer``
is for when the process boundary matters (the provider drill: moto's request handling off the
drill's event loop and interpreter, a PID to report and to see gone).

Clients still need credentials (any value: moto does not check them) from boto3's chain,
e.g. ``AWS_ACCESS_KEY_ID=testing``. The child process is stopped by its own PID (``stop()`` or
leaving the ``with`` block). Needs ``moto[server]`` (the ``drill`` extra, which ``test`` includes).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from gtm.testing.ports import free_port
from gtm.testing.procs import stop_process

__all__ = ["MOTO_FIX", "MotoServer", "MotoStartError", "ThreadedMoto", "moto_fixed"]

MOTO_FIX = '''
from moto.route53 import models as _r53
from moto.route53.exceptions import ResourceRecordAlreadyExists as _Exists
from moto.route53.exceptions import Route53ClientError as _ClientError

_orig_change = _r53.Route53Backend.change_resource_record_sets


def _change_resource_record_sets(self, zoneid, change_list):
    zone = self.get_hosted_zone(zoneid)

    def find(rrs):
        name = rrs["Name"].rstrip(".").lower() + "."
        for obj in zone.rrsets:
            if (obj.name.lower(), obj.type, obj.set_identifier) == (name, rrs["Type"], rrs.get("SetIdentifier")):
                return obj
        return None

    renamed = []
    for change in change_list:
        rrs = change["ResourceRecordSet"]
        if change["Action"] == "CREATE":
            if find(rrs) is not None:
                raise _Exists(name=rrs["Name"], _type=rrs["Type"])
            change["Action"] = "UPSERT"  # moto refuses a CREATE it has journaled before, even if deleted since
        elif change["Action"] == "DELETE":
            obj = find(rrs)
            if obj is None:  # Route 53's answer (moto checks its journal, not the zone)
                key = "name='%s', type='%s'" % (rrs["Name"].rstrip(".") + ".", rrs["Type"])
                if "SetIdentifier" in rrs:
                    key += ", set-identifier='%s'" % rrs["SetIdentifier"]
                raise _ClientError(
                    "InvalidChangeBatch", "[Tried to delete resource record set [%s] but it was not found]" % key
                )
            if "SetIdentifier" in rrs:  # moto deletes every record set of the zone with this identifier
                unique = "%s|%s|%s" % (rrs["SetIdentifier"], rrs["Name"], rrs["Type"])
                renamed.append((obj, obj.set_identifier))
                obj.set_identifier = rrs["SetIdentifier"] = unique
    try:
        return _orig_change(self, zoneid, change_list)
    except Exception:
        for obj, sid in renamed:
            obj.set_identifier = sid
        raise


_r53.Route53Backend.change_resource_record_sets = _change_resource_record_sets
'''
"""Patch text for moto 5.2's ``Route53Backend.change_resource_record_sets`` (see the module doc).

Apply in-process with ``moto_fixed()`` (which restores the original method afterwards);
``MotoServer`` applies it in the server process."""

@contextlib.contextmanager
def moto_fixed() -> Iterator[None]:
    """``MOTO_FIX`` applied to moto in this process for the ``with`` block, then undone."""
    from moto.route53 import models

    orig = models.Route53Backend.change_resource_record_sets
    exec(MOTO_FIX, {})  # our own patch text, shared with the server process
    try:
        yield
    finally:
        models.Route53Backend.change_resource_record_sets = orig  # type: ignore[method-assign]

_SERVER = MOTO_FIX + "\nimport sys\nfrom moto.server import main\nmain(sys.argv[1:])\n"


class MotoStartError(RuntimeError):
    """moto's server is not installed, exited, or did not answer in time."""


class MotoServer:
    """moto's server (every AWS service it mocks; Route 53 with ``MOTO_FIX``) in a child process.

    Args:
        host: loopback address to listen on.
        port: port; default a free one below 32768 (retried on a collision).
        ready_timeout_s: how long to wait for the server to answer.
        attempts: start attempts (each with a new port when ``port`` is None).

    Starts in the constructor; raises ``MotoStartError`` when it cannot.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, *, ready_timeout_s: float = 20.0, attempts: int = 3
    ) -> None:
        self.host = host
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        # moto logs every request to stderr: a file, never an unread pipe that could fill up.
        self._log = tempfile.NamedTemporaryFile(prefix="gtm-moto-", suffix=".log")  # noqa: SIM115
        last: MotoStartError | None = None
        for _ in range(max(1, attempts)):
            self.port = port or free_port(host)
            try:
                self._run(ready_timeout_s)
                return
            except MotoStartError as exc:
                last = exc
                self._kill()
                if port is not None:
                    break
        self.stop()
        assert last is not None
        raise last

    @property
    def url(self) -> str:
        """The endpoint URL (``endpoint_url`` of a boto3 client)."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _run(self, ready_timeout_s: float) -> None:
        self._log.seek(0)
        self._log.truncate()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, "-H", self.host, "-p", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
        )
        deadline = time.monotonic() + ready_timeout_s
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                return
            if self._proc.poll() is not None:
                raise MotoStartError(f"moto server exited with {self._proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise MotoStartError(f"moto server did not answer on {self.url} in {ready_timeout_s}s")
            time.sleep(0.05)

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's stderr (for error messages)."""
        try:
            return Path(self._log.name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def reset(self) -> None:
        """Forget every resource (``POST /moto-api/reset``)."""
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=5):
            pass

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc)

    def stop(self) -> None:
        """Stop the server (by its PID) and remove its log."""
        self._kill()
        with contextlib.suppress(OSError):
            self._log.close()

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ThreadedMoto:
    """moto's server in a thread of this process (``moto.server.ThreadedMotoServer``), on
    ``host`` and a port the OS picks, with ``MOTO_FIX`` applied in-process until ``stop()``.

    Starts in the constructor; shares moto's in-process state (``mock_aws`` resets it too).
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        from moto.server import ThreadedMotoServer

        self._fix = moto_fixed()
        self._fix.__enter__()
        self._server: Any = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
        try:
            self._server.start()
        except BaseException:
            self._fix.__exit__(None, None, None)
            raise
        self.host, self.port = self._server.get_host_and_port()
        self._stopped = False

    @property
    def url(self) -> str:
        """The endpoint URL (``endpoint_url`` of a boto3 client)."""
        return f"http://{self.host}:{self.port}"

    def reset(self) -> None:
        """Forget every resource (``POST /moto-api/reset``)."""
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=5):
            pass

    def stop(self) -> None:
        """Stop the server thread and undo ``MOTO_FIX``."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._server.stop()
        finally:
            self._fix.__exit__(None, None, None)

    def __enter__(self) -> ThreadedMoto:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
