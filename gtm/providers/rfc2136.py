"""RFC2136 provider: dynamic updates signed with TSIG (BIND, Knot, PowerDNS).

Rendering (``render``, pure):

- **Pools are plain RRsets.** A pool becomes the RRset of its *active* regions' endpoints
  (members with weight > 0): one ``A`` and/or ``AAAA`` RRset holding every active region's
  addresses. Plain DNS has no weights, so the share is **equal per address** (resolvers
  round-robin or shuffle the RRset), whatever the engine's weights were; a region with weight
  0 is left out, never kept "at weight 0". A pool whose single active region answers with a
  hostname renders as a ``CNAME``; a CNAME cannot share a name with other data nor hold two
  targets, so mixing CNAME and address regions (or several CNAME regions) in one pool is a
  capability gap (``supports_warn_or_except``: an error when strict; otherwise the address
  regions, or the first CNAME region, are kept).
- **Segments are separate names.** The default (catch-all) segment lives at the service name
  (``chat.gtm.example.com``); every other segment at ``<segment>.<service fqdn>``
  (``eu.chat.gtm.example.com``). The resolver or edge that knows the client's location picks
  the name (e.g. EU front ends resolve ``eu.chat...``). Split-horizon with BIND ``view``s
  was not chosen: views select on the *resolver's* address (not the client's; ECS is not
  supported by views), every view is a separate copy of the zone with its own journal, so one
  change would take one update per view (``key`` matching per view) and could no longer be
  one atomic message; and the data would differ per view so AXFR/observe could not see the
  whole state. Names are explicit, auditable and identical on every secondary.
- **A dark pool has no address records.** Its name carries a single owned TXT record
  (``"gtm-dark segment=<segment>: no region serves this name"``) instead, so the name keeps
  existing: address queries get NODATA (never NXDOMAIN, never another segment's regions, and
  no fallback spreads traffic anywhere: invariant 4).

Observing: an AXFR over TCP signed with the key (the server must allow transfers to it), split
by ownership markers (``_gtm-owner.<name>`` TXT). Zone infrastructure (SOA, apex NS, DNSSEC
records) is left out.

Applying: the whole plan of a zone goes in **one** UPDATE message (RFC2136 updates are atomic:
the server applies all of it or nothing), with **prerequisites** so that two writers cannot
silently overwrite each other: an update or delete requires the old RRset to exist with exactly
the observed data (value-dependent "RRset exists"), a create requires the RRset to be absent.
When someone changed one of those RRsets since ``observe``, the server answers NXRRSET/YXRRSET,
nothing is applied, and a ``TemporaryProviderError`` says to re-observe and retry. The message
goes over TCP when it is larger than ``tcp_threshold`` bytes. The server increments the SOA
serial itself and NOTIFYs its secondaries. With ``verify`` the primary is then queried for
every changed RRset and must answer the new data before ``apply`` reports success.

Errors: TSIG failures (BADKEY, BADSIG, BADTIME, ...), NOTAUTH, REFUSED, NOTZONE and FORMERR are
``PermanentProviderError``; prerequisite failures, SERVFAIL, timeouts and connection errors are
``TemporaryProviderError``. The TSIG secret is read from a file or an environment variable,
never given inline and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.tsig
import dns.update
import dns.xfr
import dns.zone

from gtm.errors import ConfigError, PermanentProviderError, ProviderError, TemporaryProviderError
from gtm.models.plan import DesiredState, PoolPlan
from gtm.models.published import rfc2136_segment_name
from gtm.providers.base import Provider
from gtm.providers.records import (
    OWNER_PREFIX,
    Observed,
    Plan,
    RecordSet,
    dns_services,
    normalize_name,
    split_ownership,
)

__all__ = ["TSIG_ALGORITHMS", "Rfc2136Provider"]

TSIG_ALGORITHMS: frozenset[str] = frozenset(
    {"hmac-md5", "hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512"}
)
"""TSIG algorithms accepted in ``tsig_algorithm`` (names as in BIND's ``key`` statement)."""

_IN = dns.rdataclass.IN
_SKIPPED_TYPES = frozenset({"SOA", "RRSIG", "NSEC", "NSEC3", "NSEC3PARAM", "DNSKEY", "CDS", "CDNSKEY", "TYPE65534"})
_PREREQ_RCODES = {
    dns.rcode.NXRRSET: "an RRset expected with the observed data is missing or differs (NXRRSET)",
    dns.rcode.YXRRSET: "an RRset expected absent now exists (YXRRSET)",
    dns.rcode.NXDOMAIN: "a name expected to exist is gone (NXDOMAIN)",
    dns.rcode.YXDOMAIN: "a name expected absent now exists (YXDOMAIN)",
}
_SECRET_IN_KEYFILE = re.compile(r'secret\s+"([^"]+)"')
_ALGORITHM_IN_KEYFILE = re.compile(r"algorithm\s+\"?([A-Za-z0-9.-]+)\"?\s*;")


class _RedactedKey(dns.tsig.Key):
    """A TSIG key whose ``repr`` leaves the secret out (dnspython's prints it)."""

    def __repr__(self) -> str:
        return f"<TSIG key {self.name} ({self.algorithm}), secret redacted>"


def dark_marker(segment: str) -> str:
    """The TXT value held at a dark segment's name (keeps the name: NODATA, not NXDOMAIN)."""
    return f'"gtm-dark segment={segment}: no region serves this name"'


def segment_name(service_fqdn: str, segment: str, is_default: bool) -> str:
    """Where a segment's pool is published: the service name for the catch-all segment,
    ``<segment>.<service fqdn>`` for the others."""
    return rfc2136_segment_name(normalize_name(service_fqdn), segment, is_default)


class Rfc2136Provider(Provider):
    """Publishes pools as plain RRsets through TSIG-signed RFC2136 updates.

    Args:
        name: provider id.
        owner_id: installation id for ownership markers.
        zones: zones this provider may change (each a primary zone on ``server``).
        max_change_fraction: see ``Provider``.
        strict: see ``Provider``.
        server: the primary's IP address (or a host name, resolved at each use).
        port: its DNS port.
        tsig_key_name: the TSIG key name as configured on the server.
        tsig_algorithm: ``hmac-sha256`` etc. (required; no silent default, because a mismatch
            only shows up as BADKEY at the first write).
        tsig_secret_file: file with the base64 secret, or a BIND key file (``tsig-keygen``
            output) whose ``secret "..."`` is used.
        tsig_secret_env: name of an environment variable holding the base64 secret.
        timeout_s: seconds per message (update, verification query, or whole AXFR).
        verify: after an update, query the primary for each changed RRset.
        tcp_threshold: updates larger than this many bytes go over TCP.

    Raises:
        ConfigError: every problem with the options at once (the secret's value is never
            part of a message).
    """

    SUPPORTS: ClassVar[frozenset[str]] = frozenset({"A", "AAAA", "CNAME"})
    KIND: ClassVar[str] = "rfc2136"

    def __init__(
        self,
        name: str,
        *,
        owner_id: str,
        zones: Sequence[str],
        max_change_fraction: float = 0.5,
        strict: bool = True,
        server: str | None = None,
        port: int = 53,
        tsig_key_name: str | None = None,
        tsig_algorithm: str | None = None,
        tsig_secret_file: str | None = None,
        tsig_secret_env: str | None = None,
        timeout_s: float = 2.0,
        verify: bool = True,
        tcp_threshold: int = 512,
    ) -> None:
        super().__init__(
            name, owner_id=owner_id, zones=[normalize_name(z) for z in zones],
            max_change_fraction=max_change_fraction, strict=strict,
        )
        where = f"provider {name!r} (rfc2136)"
        reasons: list[str] = []
        if not server:
            reasons.append(f"{where}: 'server' is required (the primary's address)")
        if not isinstance(port, int) or not 0 < port < 65536:
            reasons.append(f"{where}: 'port' must be 1-65535, got {port!r}")
        if not tsig_key_name:
            reasons.append(f"{where}: 'tsig_key_name' is required")
        algorithm = (tsig_algorithm or "").strip().lower().rstrip(".")
        if not tsig_algorithm:
            reasons.append(
                f"{where}: 'tsig_algorithm' is required (one of {sorted(TSIG_ALGORITHMS)}; "
                "it must match the server's key)"
            )
        elif algorithm not in TSIG_ALGORITHMS:
            reasons.append(f"{where}: 'tsig_algorithm' {tsig_algorithm!r} unknown; one of {sorted(TSIG_ALGORITHMS)}")
        if timeout_s <= 0:
            reasons.append(f"{where}: 'timeout_s' must be > 0, got {timeout_s!r}")
        if tcp_threshold < 0:
            reasons.append(f"{where}: 'tcp_threshold' must be >= 0, got {tcp_threshold!r}")
        secret, source = self._read_secret(where, tsig_secret_file, tsig_secret_env, algorithm, reasons)
        key: _RedactedKey | None = None
        if secret is not None and tsig_key_name and algorithm in TSIG_ALGORITHMS:
            try:
                key = _RedactedKey(tsig_key_name, secret, algorithm)
            except dns.exception.DNSException as exc:
                reasons.append(f"{where}: 'tsig_key_name' {tsig_key_name!r} is not a DNS name: {exc}")
        if reasons:
            raise ConfigError(reasons)
        assert key is not None and server is not None
        self.server = server
        self.port = port
        self.timeout_s = float(timeout_s)
        self.verify = verify
        self.tcp_threshold = tcp_threshold
        self.tsig_key_name = key.name.to_text(omit_final_dot=True)
        self.tsig_algorithm = algorithm
        self._key = key
        self.last_transport: str | None = None
        """``udp`` or ``tcp``: how the last update message went (for tests and debugging)."""
        self.log.debug(
            "init: server %s:%d, key %s (%s), secret set from %s", server, port, self.tsig_key_name, algorithm, source
        )

    @staticmethod
    def _read_secret(
        where: str, path: str | None, env: str | None, algorithm: str, reasons: list[str]
    ) -> tuple[str | None, str]:
        """The base64 secret and where it came from; problems are appended to ``reasons``."""
        if path and env:
            reasons.append(f"{where}: give one of 'tsig_secret_file' or 'tsig_secret_env', not both")
            return None, ""
        if not path and not env:
            reasons.append(
                f"{where}: the TSIG secret is required: 'tsig_secret_file' (a file) or 'tsig_secret_env' "
                "(an environment variable); secrets are never given inline"
            )
            return None, ""
        if path:
            source = f"file {path}"
            try:
                text = Path(path).read_text()
            except OSError as exc:
                reasons.append(f"{where}: cannot read tsig_secret_file {path}: {exc.strerror or exc}")
                return None, source
            m = _SECRET_IN_KEYFILE.search(text)
            if m is not None:  # a BIND key file (tsig-keygen output)
                alg = _ALGORITHM_IN_KEYFILE.search(text)
                if alg is not None and algorithm and alg.group(1).lower() != algorithm:
                    reasons.append(
                        f"{where}: tsig_secret_file {path} declares algorithm {alg.group(1)}, "
                        f"but tsig_algorithm is {algorithm}"
                    )
                secret = m.group(1)
            else:
                secret = text.strip()
        else:
            assert env is not None
            source = f"environment variable {env}"
            secret = os.environ.get(env, "").strip()
            if not secret:
                reasons.append(f"{where}: environment variable {env} (tsig_secret_env) is unset or empty")
                return None, source
        try:
            if not base64.b64decode(secret, validate=True):
                raise ValueError("empty")
        except (binascii.Error, ValueError):
            reasons.append(f"{where}: the TSIG secret from {source} is not valid base64 (value not shown)")
            return None, source
        return secret, source

    # -- render (pure) ---------------------------------------------------------------------

    def render(self, state: DesiredState, zone: str) -> list[RecordSet]:
        """Record sets for every service of ``zone``: one name per segment (see module doc).

        Raises:
            PermanentProviderError: two segments or services map to one name, an endpoint
                does not parse, or (strict) a pool cannot be expressed as one RRset.
        """
        zone_n = normalize_name(zone)
        out: list[RecordSet] = []
        claimed: dict[str, str] = {}
        published = dns_services(state)
        for fqdn in sorted(published):
            svc = published[fqdn]
            if normalize_name(svc.zone) != zone_n:
                continue
            for route in svc.segments:  # most specific first; the first default segment wins
                name = segment_name(svc.fqdn, route.segment, route.is_default)
                who = f"{svc.fqdn} segment {route.segment}"
                if name in claimed:
                    if claimed[name].startswith(f"{svc.fqdn} "):
                        continue  # a second catch-all segment of the same service
                    raise PermanentProviderError(f"{self.name}: {name} is claimed by both {claimed[name]} and {who}")
                claimed[name] = who
                out.extend(self._render_pool(name, svc.ttl, route.segment, state.pools.get(route.pool_id), state))
        return out

    def _render_pool(
        self, name: str, ttl: int, segment: str, pool: PoolPlan | None, state: DesiredState
    ) -> list[RecordSet]:
        values: dict[str, set[str]] = {}
        cnames: list[tuple[str, str]] = []
        for member in pool.active if pool is not None else ():
            for rdtype_text, value in state.endpoints.get(member.region, ()):
                rdtype = rdtype_text.upper()
                if rdtype not in self.SUPPORTS:
                    self.supports_warn_or_except(f"{name}: region {member.region} endpoint type {rdtype} not supported")
                    continue
                canonical = _canonical(rdtype, value, f"{name}: region {member.region}")
                if rdtype == "CNAME":
                    cnames.append((member.region, canonical))
                else:
                    values.setdefault(rdtype, set()).add(canonical)
        if cnames:
            targets = sorted({t for _, t in cnames})
            assert pool is not None
            if values:
                self.supports_warn_or_except(
                    f"{name}: pool {pool.pool_id} mixes CNAME regions ({', '.join(r for r, _ in cnames)}) with "
                    "address regions; a name cannot hold a CNAME and addresses; leaving the CNAME regions out"
                )
            elif len(targets) > 1:
                self.supports_warn_or_except(
                    f"{name}: pool {pool.pool_id} has {len(targets)} CNAME regions; a CNAME holds one target; "
                    f"answering only {cnames[0][1]} ({cnames[0][0]})"
                )
                values["CNAME"] = {cnames[0][1]}
            else:
                values["CNAME"] = {targets[0]}
        if not values:  # dark: keep the name (NODATA), answer no address at all
            return [RecordSet(name=name, rdtype="TXT", ttl=ttl, values=(dark_marker(segment),))]
        return [RecordSet(name=name, rdtype=t, ttl=ttl, values=tuple(sorted(v))) for t, v in sorted(values.items())]

    @property
    def server_text(self) -> str:
        """``host:port`` of the primary (``[v6]:port`` for an IPv6 address)."""
        host = f"[{self.server}]" if ":" in self.server else self.server
        return f"{host}:{self.port}"

    # -- observe -----------------------------------------------------------------------------

    async def observe(self, zone: str, managed_names: Iterable[str] = ()) -> Observed:
        """AXFR ``zone`` (TCP, TSIG) and split it by ownership.

        Args:
            zone: a zone of this provider.
            managed_names: names gtm wants to hold; unowned record sets there are reported in
                ``Observed.foreign`` (``plan_state`` passes the rendered names).

        Raises:
            PermanentProviderError: transfer refused, bad key, not authoritative.
            TemporaryProviderError: timeout, connection failure, SERVFAIL.
        """
        zone_n = normalize_name(zone)
        records = await self._axfr(zone_n)
        observed = split_ownership(zone_n, records, self.owner_id, managed_names)
        self.log.debug(
            "observe: %s: %d record sets, %d owned, %d foreign", zone_n, len(records), len(observed.owned),
            len(observed.foreign),
        )
        return observed

    async def _axfr(self, zone: str) -> list[RecordSet]:
        origin = dns.name.from_text(zone)
        holder = dns.zone.Zone(origin, relativize=False)
        query, _ = dns.xfr.make_query(holder, serial=None)
        query.use_tsig(self._key)
        where = await self._address()
        what = f"AXFR {zone}"
        try:
            await dns.asyncquery.inbound_xfr(
                where, holder, query=query, port=self.port, timeout=self.timeout_s, lifetime=self.timeout_s * 5
            )
        except dns.xfr.TransferError as exc:
            error = self._rcode_error(exc.rcode, what, zone)
            raise (error or self.context(TemporaryProviderError(str(exc)), what)) from exc
        except (dns.exception.DNSException, OSError, EOFError) as exc:
            raise self._translate(exc, what) from exc
        out: list[RecordSet] = []
        for name, rdataset in holder.iterate_rdatasets():
            rdtype = dns.rdatatype.to_text(rdataset.rdtype)
            if rdtype in _SKIPPED_TYPES or (rdtype == "NS" and name == origin):
                continue
            out.append(
                RecordSet(
                    name=normalize_name(name.to_text()),
                    rdtype=rdtype,
                    ttl=rdataset.ttl,
                    values=tuple(sorted(_value_text(rdtype, rd) for rd in rdataset)),
                )
            )
        return out

    # -- plan ------------------------------------------------------------------------------

    # -- apply ---------------------------------------------------------------------------------

    async def _apply(self, plan: Plan) -> int:
        """Send ``plan`` as one TSIG-signed UPDATE with prerequisites; returns 1 (messages sent).

        Verification queries (``verify``) are reads and not counted.
        """
        zone = normalize_name(plan.zone)
        update = self._update_message(zone, plan)
        try:
            size = len(update.to_wire())
        except dns.exception.TooBig as exc:
            raise PermanentProviderError(
                f"{self.name}: the plan for {zone} ({len(plan.changes)} changes) does not fit one DNS message "
                "(64 KiB); it cannot be applied atomically; split the zone"
            ) from exc
        transport = "tcp" if size > self.tcp_threshold else "udp"
        where = await self._address()
        what = f"UPDATE zone {zone} ({len(plan.changes)} change(s), {size} bytes, {transport})"
        started = time.perf_counter()
        try:
            if transport == "tcp":
                response = await dns.asyncquery.tcp(update, where, timeout=self.timeout_s, port=self.port)
            else:
                response = await dns.asyncquery.udp(update, where, timeout=self.timeout_s, port=self.port)
                if response.flags & dns.flags.TC:
                    # Never resend: the update may already be applied. The prerequisites make a
                    # fresh observe + plan safe instead.
                    raise self.context(TemporaryProviderError("truncated response; re-observe and retry"), what)
        except ProviderError:
            raise
        except (dns.exception.DNSException, OSError, EOFError) as exc:
            raise self._translate(exc, what) from exc
        finally:
            self.last_transport = transport
        elapsed_ms = (time.perf_counter() - started) * 1000
        error = self._rcode_error(response.rcode(), what, zone)
        if error is not None:
            raise error
        self.log.debug("_apply: %s: NOERROR in %.1f ms", what, elapsed_ms)
        if self.verify:
            await self._verify(where, plan)
        return 1

    def _update_message(self, zone: str, plan: Plan) -> dns.update.UpdateMessage:
        origin = dns.name.from_text(zone)
        update = dns.update.UpdateMessage(origin, keyring=self._key)
        for change in plan.changes:
            rs = change.record
            if rs.set_identifier or rs.weight is not None or rs.geo or rs.alias_target:
                raise PermanentProviderError(
                    f"{self.name}: {rs.name} {rs.rdtype}: weighted/geo/alias record sets cannot be sent by RFC2136"
                )
            name = dns.name.from_text(rs.name)
            if not name.is_subdomain(origin):
                raise PermanentProviderError(f"{self.name}: {rs.name} is outside zone {zone}")
            rdtype = dns.rdatatype.from_text(rs.rdtype)
            if change.action == "create":
                assert change.new is not None
                update.absent(name, rdtype)
                update.add(name, _rdataset(change.new))
            elif change.action == "update":
                assert change.old is not None and change.new is not None
                update.present(name, _rdataset(change.old, ttl=0))
                update.replace(name, _rdataset(change.new))
            else:
                assert change.old is not None
                update.present(name, _rdataset(change.old, ttl=0))
                update.delete(name, rdtype)
        return update

    async def _verify(self, where: str, plan: Plan) -> None:
        """Query the primary for each changed RRset; it must answer the new data."""
        expected: dict[tuple[str, str], RecordSet | None] = {}
        for change in plan.changes:
            rs = change.record
            expected.setdefault((rs.name, rs.rdtype), None)
            if change.new is not None:
                expected[(rs.name, rs.rdtype)] = change.new
        sem = asyncio.Semaphore(32)

        async def check(name: str, rdtype: str, want: RecordSet | None) -> str | None:
            query = dns.message.make_query(name, rdtype, use_edns=0, flags=0)
            async with sem:
                try:
                    response, _ = await dns.asyncquery.udp_with_fallback(
                        query, where, timeout=self.timeout_s, port=self.port
                    )
                except (dns.exception.DNSException, OSError) as exc:
                    return f"{name} {rdtype}: no answer ({type(exc).__name__}: {exc})"
            got: tuple[str, ...] = ()
            qname = dns.name.from_text(name)
            for rrset in response.answer:
                if rrset.name == qname and dns.rdatatype.to_text(rrset.rdtype) == rdtype:
                    got = tuple(sorted(_value_text(rdtype, rd) for rd in rrset))
            want_values = want.values if want is not None else ()
            if got != want_values:
                return f"{name} {rdtype}: answers {list(got) or 'nothing'}, expected {list(want_values) or 'nothing'}"
            return None

        problems = [
            p
            for p in await asyncio.gather(*(check(n, t, rs) for (n, t), rs in sorted(expected.items(), key=_by_key)))
            if p is not None
        ]
        if problems:
            raise TemporaryProviderError(
                f"{self.name}: {plan.zone}: the server accepted the update but does not answer it: "
                + "; ".join(problems[:5])
                + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
                + "; re-observe and retry"
            )
        self.log.debug("_verify: %s: %d RRsets answer the new data", plan.zone, len(expected))

    # -- errors ------------------------------------------------------------------------------

    async def _address(self) -> str:
        try:
            ipaddress.ip_address(self.server)
            return self.server
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.server, self.port, proto=6)
        except OSError as exc:
            raise TemporaryProviderError(f"{self.name}: cannot resolve server {self.server}: {exc}") from exc
        return str(infos[0][4][0])

    def _key_text(self) -> str:
        return f"key {self.tsig_key_name} ({self.tsig_algorithm})"

    def _rcode_error(self, code: int, what: str, zone: str) -> ProviderError | None:
        """The error for a response code (None for NOERROR), naming the operation ``what``."""
        error = self._rcode_detail(code, zone)
        return None if error is None else self.context(error, what)

    def _rcode_detail(self, code: int, zone: str) -> ProviderError | None:
        rcode = dns.rcode.Rcode.make(code)
        if rcode == dns.rcode.NOERROR:
            return None
        text = dns.rcode.to_text(rcode)
        if rcode in _PREREQ_RCODES:
            return TemporaryProviderError(
                f"prerequisite failed: {_PREREQ_RCODES[rcode]}: someone else changed the zone "
                "since it was observed; nothing was applied; re-observe and retry"
            )
        if rcode == dns.rcode.SERVFAIL:
            return TemporaryProviderError("SERVFAIL from the server; retry later", delay=5.0)
        hints = {
            dns.rcode.NOTAUTH: f"the server is not authoritative for {zone} or does not accept {self._key_text()}",
            dns.rcode.REFUSED: f"the zone's update-policy/allow-transfer does not grant {self._key_text()}",
            dns.rcode.NOTZONE: f"a name is outside zone {zone}",
            dns.rcode.FORMERR: "the server could not parse the message",
            dns.rcode.NOTIMP: "the server does not implement this operation",
        }
        return PermanentProviderError(f"{text}: {hints.get(rcode, 'rejected by the server')}")

    def _translate(self, exc: BaseException, what: str) -> ProviderError:
        """Map a dnspython or socket exception to a ProviderError naming the operation ``what``
        and this server (caller raises ``from exc``)."""
        return self.context(self._translate_detail(exc), what)

    def _translate_detail(self, exc: BaseException) -> ProviderError:
        key = self._key_text()
        if isinstance(exc, dns.tsig.PeerBadKey):
            return PermanentProviderError(
                f"BADKEY: the server does not know {key}; check tsig_key_name and tsig_algorithm"
            )
        if isinstance(exc, dns.tsig.PeerBadSignature):
            return PermanentProviderError(
                f"BADSIG: the server could not verify the signature of {key}; "
                "the secret differs from the server's"
            )
        if isinstance(exc, dns.tsig.PeerBadTime):
            return PermanentProviderError(
                f"BADTIME: the server rejected the signing time of {key} (clock skew beyond "
                "the 300 s fudge); fix the clock (NTP) on this host or the server"
            )
        if isinstance(exc, dns.tsig.PeerBadTruncation):
            return PermanentProviderError(f"BADTRUNC: truncated MAC refused for {key}")
        if isinstance(exc, dns.tsig.PeerError):
            return PermanentProviderError(f"TSIG error from the server for {key}: {exc}")
        if isinstance(exc, dns.tsig.BadTime):
            return PermanentProviderError(
                "BADTIME: the server's response is signed at a time beyond the fudge; "
                "fix the clock (NTP) on this host or the server"
            )
        if isinstance(exc, (dns.tsig.BadSignature, dns.tsig.BadKey, dns.tsig.BadAlgorithm, dns.message.UnknownTSIGKey)):
            return PermanentProviderError(
                f"the response's TSIG did not verify with {key} ({type(exc).__name__})"
            )
        if isinstance(exc, dns.exception.Timeout):
            return TemporaryProviderError(
                f"no response in {self.timeout_s}s; an update may or may not have been applied; "
                "re-observe and retry"
            )
        if isinstance(exc, (EOFError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
            return TemporaryProviderError(
                f"the server closed the connection without answering ({type(exc).__name__}); an update may or may "
                "not have been applied; re-observe and retry"
            )
        if isinstance(exc, OSError):
            return TemporaryProviderError(f"{type(exc).__name__}: {exc}")
        return TemporaryProviderError(f"{type(exc).__name__}: {exc}")


# -- helpers -----------------------------------------------------------------------------------


def _is_marker(name: str) -> bool:
    return name.startswith(OWNER_PREFIX + ".")


def _by_key(item: tuple[tuple[str, str], Any]) -> tuple[str, str]:
    return item[0]


def _value_text(rdtype: str, rd: dns.rdata.Rdata) -> str:
    """Canonical text of one rdata as ``render`` writes it (CNAME targets lower case)."""
    text = rd.to_text()
    return text.lower() if rdtype == "CNAME" else text


def _canonical(rdtype: str, value: str, where: str) -> str:
    """``value`` as the server will give it back (``2001:db8::1``, ``lb.example.net.``)."""
    try:
        rd = dns.rdata.from_text(
            _IN, dns.rdatatype.from_text(rdtype), value, origin=dns.name.root, relativize=False
        )
    except (dns.exception.DNSException, ValueError) as exc:
        raise PermanentProviderError(f"{where}: {rdtype} {value!r} is not valid record data: {exc}") from exc
    return _value_text(rdtype, rd)


def _rdataset(rs: RecordSet, ttl: int | None = None) -> dns.rdataset.Rdataset:
    return dns.rdataset.from_text_list(
        _IN, dns.rdatatype.from_text(rs.rdtype), rs.ttl if ttl is None else ttl, list(rs.values),
        origin=dns.name.root, relativize=False,
    )

