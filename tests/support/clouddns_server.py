"""A small local stand-in for the Google Cloud DNS v1 REST API (no emulator exists).

It implements the documented subset ``gtm.providers.clouddns`` uses, over real HTTP on
127.0.0.1, so the provider's own client stack (google-cloud-dns' authenticated connection,
``requests``, google-api-core's error mapping) is exercised end to end:

- ``GET  /dns/v1/projects/{p}/managedZones[?dnsName=]`` and ``.../managedZones/{zone}``
- ``GET  .../managedZones/{zone}/rrsets[?name=&type=&maxResults=&pageToken=]`` (paginated)
- ``POST .../managedZones/{zone}/changes`` and ``GET .../changes/{id}``

Changes are atomic and checked like Cloud DNS checks them: every deletion must match an
existing record set exactly (``412 conditionNotMet``; ``404 notFound`` when it is absent), an
addition of a (name, type) that exists after the deletions is ``409 alreadyExists``, a record
set holds either ``rrdatas`` or one ``routingPolicy`` (``wrr`` or ``geo`` items), and a CNAME
shares its name with nothing (``400 invalid``). A committed change reads ``pending`` for
``pending_gets`` reads, then ``done`` (or forever ``pending`` with ``stuck``).

Fault injection for tests (``inject``): the next change creation can answer an HTTP error
before committing anything, or commit and then answer the error (a 502 after commit is the
case a client must not blindly retry); a fault can target one record set, answering only the
changes that touch it. Every request is recorded in ``requests``.

Not a product component: test harness (``tests/support/``), used by ``tests/test_clouddns.py``;
it binds only to loopback and needs nothing beyond the standard library.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

_PREFIX = "/dns/v1/projects/"


@dataclass(frozen=True)
class Fault:
    """An injected answer to the next change creation.

    Attributes:
        status: HTTP status to answer.
        commit: apply the change first (it takes effect), then answer ``status``.
    """

    status: int
    commit: bool = False
    rrset: tuple[str, str] | None = None
    """Only changes that delete or add this (name with trailing dot, type) get the answer."""


class ApiError(Exception):
    """An error answer: HTTP status, Google error ``reason`` and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass
class _Zone:
    info: dict[str, Any]
    rrsets: dict[tuple[str, str], dict[str, Any]]


class FakeCloudDns:
    """An in-memory Cloud DNS project served over HTTP on 127.0.0.1.

    Args:
        project: the project id the URLs must name.
        page_size: largest rrsets page returned (small values exercise pagination).
        pending_gets: how many ``changes.get`` reads of a change answer ``pending``.

    Use as a context manager, or ``start()`` / ``stop()``; ``url`` is the API endpoint to pass
    as ``api_endpoint``.
    """

    def __init__(self, project: str = "test-project", *, page_size: int = 100, pending_gets: int = 1) -> None:
        self.project = project
        self.page_size = page_size
        self.pending_gets = pending_gets
        self.stuck = False
        """When True, every change stays ``pending`` forever."""
        self.requests: list[tuple[str, str]] = []
        """(method, path) of every request received, in order."""
        self._zones: dict[str, _Zone] = {}
        self._changes: dict[tuple[str, str], dict[str, Any]] = {}
        self._pending_left: dict[tuple[str, str], int] = {}
        self._faults: deque[Fault] = deque()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve in a background thread; returns the endpoint URL."""
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-clouddns", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeCloudDns:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- test controls -------------------------------------------------------------------

    def add_zone(self, name: str, dns_name: str, *, visibility: str = "public") -> None:
        """Create managed zone ``name`` for ``dns_name`` with its SOA and NS record sets."""
        dns_name = _fqdn(dns_name)
        info = {
            "kind": "dns#managedZone",
            "name": name,
            "dnsName": dns_name,
            "id": str(1000 + len(self._zones)),
            "visibility": visibility,
            "nameServers": ["ns-cloud-a1.googledomains.com.", "ns-cloud-a2.googledomains.com."],
        }
        zone = _Zone(info=info, rrsets={})
        seed: tuple[dict[str, Any], ...] = (
            {
                "name": dns_name,
                "type": "SOA",
                "ttl": 21600,
                "rrdatas": ["ns-cloud-a1.googledomains.com. cloud-dns-hostmaster.google.com. 1 21600 3600 259200 300"],
            },
            {"name": dns_name, "type": "NS", "ttl": 21600, "rrdatas": info["nameServers"]},
        )
        for rs in seed:
            zone.rrsets[(rs["name"], rs["type"])] = _stored(rs)
        with self._lock:
            self._zones[name] = zone

    def put_rrset(self, zone: str, rrset: dict[str, Any]) -> None:
        """Create or replace a record set directly (another writer; not counted as a request)."""
        with self._lock:
            stored = _stored(rrset)
            self._zones[zone].rrsets[(stored["name"], stored["type"])] = stored

    def delete_rrset(self, zone: str, name: str, rdtype: str) -> None:
        """Remove a record set directly (another writer)."""
        with self._lock:
            self._zones[zone].rrsets.pop((_fqdn(name), rdtype), None)

    def rrsets(self, zone: str) -> dict[tuple[str, str], dict[str, Any]]:
        """A copy of the zone's record sets by (name with trailing dot, type)."""
        with self._lock:
            return copy.deepcopy(self._zones[zone].rrsets)

    def inject(
        self, status: int, *, commit: bool = False, times: int = 1, rrset: tuple[str, str] | None = None
    ) -> None:
        """Answer the next ``times`` change creations with ``status`` (after committing when
        ``commit``). With ``rrset`` (name, type), only changes that delete or add that record set
        are answered so (nothing committed), the others go through: a record set Cloud DNS keeps
        refusing."""
        target = (_fqdn(rrset[0]), rrset[1]) if rrset is not None else None
        with self._lock:
            self._faults.extend(Fault(status, commit, target) for _ in range(times))

    def count(self, method: str | None = None, suffix: str = "") -> int:
        """Requests received, optionally only those with ``method`` whose path ends with ``suffix``."""
        with self._lock:
            return sum(1 for m, p in self.requests if (method is None or m == method) and p.endswith(suffix))

    @property
    def change_posts(self) -> int:
        """How many change creations were received (answered or not)."""
        return self.count("POST", "/changes")

    @property
    def committed_changes(self) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(c) for c in self._changes.values()]

    # -- request handling (called from the server's threads) ----------------------------

    def handle(self, method: str, raw_path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        split = urlsplit(raw_path)
        path = split.path
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        with self._lock:
            self.requests.append((method, path))
            try:
                return 200, self._route(method, path, query, body)
            except ApiError as err:
                return err.status, _error_body(err)

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> dict[str, Any]:
        if not path.startswith(_PREFIX):
            raise ApiError(404, "notFound", f"unknown path {path}")
        parts = [unquote(p) for p in path[len(_PREFIX) :].split("/")]
        if parts[0] != self.project:
            raise ApiError(403, "forbidden", f"project {parts[0]!r} is not accessible")
        rest = parts[1:]
        if rest == ["managedZones"] and method == "GET":
            return self._list_zones(query)
        if len(rest) < 2 or rest[0] != "managedZones":
            raise ApiError(404, "notFound", f"unknown path {path}")
        zone = self._zones.get(rest[1])
        if zone is None:
            raise ApiError(404, "notFound", f"The 'parameters.managedZone' resource named '{rest[1]}' does not exist.")
        tail = rest[2:]
        if tail == [] and method == "GET":
            return copy.deepcopy(zone.info)
        if tail == ["rrsets"] and method == "GET":
            return self._list_rrsets(zone, query)
        if tail == ["changes"] and method == "POST":
            try:
                payload = json.loads(body or b"{}")
            except ValueError as exc:
                raise ApiError(400, "parseError", "request body is not JSON") from exc
            return self._create_change(rest[1], zone, payload)
        if len(tail) == 2 and tail[0] == "changes" and method == "GET":
            return self._get_change(rest[1], tail[1])
        raise ApiError(404, "notFound", f"unknown path {method} {path}")

    def _list_zones(self, query: dict[str, str]) -> dict[str, Any]:
        want = query.get("dnsName")
        zones = [
            copy.deepcopy(z.info) for z in self._zones.values() if want is None or z.info["dnsName"] == _fqdn(want)
        ]
        return {"kind": "dns#managedZonesListResponse", "managedZones": zones}

    def _list_rrsets(self, zone: _Zone, query: dict[str, str]) -> dict[str, Any]:
        items = [zone.rrsets[k] for k in sorted(zone.rrsets)]
        if "name" in query:
            items = [r for r in items if r["name"] == _fqdn(query["name"])]
        if "type" in query:
            items = [r for r in items if r["type"] == query["type"]]
        size = min(int(query.get("maxResults", self.page_size)), self.page_size)
        start = int(query.get("pageToken", "0") or 0)
        page = items[start : start + size]
        out: dict[str, Any] = {"kind": "dns#resourceRecordSetsListResponse", "rrsets": copy.deepcopy(page)}
        if start + size < len(items):
            out["nextPageToken"] = str(start + size)
        return out

    def _create_change(self, zone_name: str, zone: _Zone, payload: dict[str, Any]) -> dict[str, Any]:
        fault = self._next_fault(payload)
        if fault is not None and not fault.commit:
            raise ApiError(fault.status, _reason(fault.status), f"injected {fault.status} (nothing committed)")
        change = self._commit(zone_name, zone, payload)
        if fault is not None:
            raise ApiError(fault.status, _reason(fault.status), f"injected {fault.status} after commit")
        return change

    def _next_fault(self, payload: dict[str, Any]) -> Fault | None:
        """The first queued fault that applies to this change (taken off the queue)."""
        touched = {
            (r.get("name"), r.get("type"))
            for r in [*(payload.get("deletions") or []), *(payload.get("additions") or [])]
            if isinstance(r, dict)
        }
        for fault in self._faults:
            if fault.rrset is None or fault.rrset in touched:
                self._faults.remove(fault)
                return fault
        return None

    def _commit(self, zone_name: str, zone: _Zone, payload: dict[str, Any]) -> dict[str, Any]:
        additions = [_validated(r, zone.info["dnsName"]) for r in payload.get("additions") or []]
        deletions = [_validated(r, zone.info["dnsName"], deletion=True) for r in payload.get("deletions") or []]
        if not additions and not deletions:
            raise ApiError(400, "required", "The change must contain additions or deletions")
        work = dict(zone.rrsets)
        for i, rs in enumerate(deletions):
            key = (rs["name"], rs["type"])
            have = work.get(key)
            if have is None:
                raise ApiError(
                    404,
                    "notFound",
                    f"The 'entity.change.deletions[{i}]' resource named '{rs['name']} ({rs['type']})' does not exist.",
                )
            if _canonical(have) != _canonical(rs):
                raise ApiError(412, "conditionNotMet", f"Precondition not met for 'entity.change.deletions[{i}]'")
            del work[key]
        for i, rs in enumerate(additions):
            key = (rs["name"], rs["type"])
            if key in work:
                raise ApiError(
                    409,
                    "alreadyExists",
                    f"The resource 'entity.change.additions[{i}]' named '{rs['name']} ({rs['type']})' already exists",
                )
            work[key] = rs
        cnames = {n for n, t in work if t == "CNAME"}
        for name, rdtype in work:
            if name in cnames and rdtype != "CNAME":
                raise ApiError(400, "cnameResourceRecordSetConflict", f"CNAME at {name} cannot coexist with {rdtype}")
        zone.rrsets = work
        cid = str(next(self._ids))
        change = {
            "kind": "dns#change",
            "id": cid,
            "status": "pending",
            "startTime": "2024-01-01T00:00:00.000Z",
            "additions": copy.deepcopy(additions),
            "deletions": copy.deepcopy(deletions),
        }
        self._changes[(zone_name, cid)] = change
        self._pending_left[(zone_name, cid)] = self.pending_gets
        return copy.deepcopy(change)

    def _get_change(self, zone_name: str, cid: str) -> dict[str, Any]:
        key = (zone_name, cid)
        change = self._changes.get(key)
        if change is None:
            raise ApiError(404, "notFound", f"The 'parameters.changeId' resource named '{cid}' does not exist.")
        if not self.stuck:
            if self._pending_left[key] <= 0:
                change["status"] = "done"
            self._pending_left[key] -= 1
        return copy.deepcopy(change)


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeCloudDns
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms delayed-ACK stalls

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload = self.server_fake.handle(method, self.path, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


# -- validation and canonical forms ------------------------------------------------------------


def _fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."


def _reason(status: int) -> str:
    return {
        400: "invalid",
        404: "notFound",
        409: "alreadyExists",
        412: "conditionNotMet",
        429: "rateLimitExceeded",
    }.get(status, "backendError")


def _error_body(err: ApiError) -> dict[str, Any]:
    return {
        "error": {
            "code": err.status,
            "message": err.message,
            "errors": [{"domain": "global", "reason": err.reason, "message": err.message}],
        }
    }


def _stored(rs: dict[str, Any]) -> dict[str, Any]:
    """The record set as the service returns it: ``kind`` fields, weights as doubles."""
    out = copy.deepcopy(rs)
    out["kind"] = "dns#resourceRecordSet"
    policy = out.get("routingPolicy")
    if policy is not None:
        policy["kind"] = "dns#rRSetRoutingPolicy"
        if "wrr" in policy:
            policy["wrr"]["kind"] = "dns#rRSetRoutingPolicyWrrPolicy"
            for item in policy["wrr"].get("items", []):
                item["kind"] = "dns#rRSetRoutingPolicyWrrPolicyWrrPolicyItem"
                item["weight"] = float(item["weight"])
        if "geo" in policy:
            policy["geo"]["kind"] = "dns#rRSetRoutingPolicyGeoPolicy"
            for item in policy["geo"].get("items", []):
                item["kind"] = "dns#rRSetRoutingPolicyGeoPolicyGeoPolicyItem"
    return out


def _validated(rs: Any, dns_name: str, *, deletion: bool = False) -> dict[str, Any]:
    if not isinstance(rs, dict):
        raise ApiError(400, "invalid", "a record set must be an object")
    name, rdtype = rs.get("name"), rs.get("type")
    if not isinstance(name, str) or not name.endswith("."):
        raise ApiError(400, "invalid", f"invalid record name {name!r} (must be absolute)")
    if name != dns_name and not name.endswith("." + dns_name):
        raise ApiError(400, "invalid", f"{name} is not within {dns_name}")
    if not isinstance(rdtype, str) or not rdtype:
        raise ApiError(400, "invalid", "record type required")
    ttl = rs.get("ttl")
    if not isinstance(ttl, int) or ttl < 0:
        raise ApiError(400, "invalid", f"invalid ttl {ttl!r}")
    rrdatas, policy = rs.get("rrdatas"), rs.get("routingPolicy")
    if (rrdatas is None) == (policy is None):
        raise ApiError(400, "invalid", f"{name} {rdtype}: give exactly one of rrdatas or routingPolicy")
    if rrdatas is not None and (not isinstance(rrdatas, list) or not rrdatas):
        raise ApiError(400, "invalid", f"{name} {rdtype}: rrdatas must be a non-empty list")
    if policy is not None and not deletion:
        kinds = [k for k in ("wrr", "geo", "primaryBackup") if k in policy]
        if len(kinds) != 1 or kinds[0] == "primaryBackup":
            raise ApiError(400, "invalid", f"{name} {rdtype}: routingPolicy needs exactly one of wrr, geo")
        items = policy[kinds[0]].get("items") or []
        if not items:
            raise ApiError(400, "invalid", f"{name} {rdtype}: routingPolicy without items")
        seen: set[str] = set()
        for item in items:
            if not item.get("rrdatas"):
                raise ApiError(400, "invalid", f"{name} {rdtype}: policy item without rrdatas")
            if kinds[0] == "wrr":
                w = item.get("weight")
                if not isinstance(w, (int, float)) or w < 0:
                    raise ApiError(400, "invalid", f"{name} {rdtype}: invalid weight {w!r}")
            else:
                loc = item.get("location")
                if not isinstance(loc, str) or not loc or loc in seen:
                    raise ApiError(400, "invalid", f"{name} {rdtype}: missing or duplicate location {loc!r}")
                seen.add(loc)
    return _stored(rs)


def _strip_kind(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_kind(v) for k, v in value.items() if k != "kind"}
    if isinstance(value, list):
        return [_strip_kind(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _canonical(rs: dict[str, Any]) -> str:
    return json.dumps(_strip_kind(rs), sort_keys=True)
