"""The Redis store: reports, overrides, desired state, audit, leader lease and wake-up events.

Works against a real Redis server (redis-py asyncio) and, for the zero-setup embedded mode,
against fakeredis in-process. Neither mode depends on keyspace notifications or ACLs: agents
publish explicit events, and freshness is judged from report timestamps, not key expiry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gtm.engine.plausibility import MALFORMED, Rejection
from gtm.errors import ConfigError, LeaseLostError, StoreError
from gtm.log import get_logger
from gtm.models.audit import AuditEntry
from gtm.models.drill import DrillLock
from gtm.models.override import Override
from gtm.models.plan import DesiredState
from gtm.models.report import BgpState, FleetReport, VantageReport
from gtm.store.keys import AUDIT_STREAM_MAXLEN, REPORT_STREAM_MAXLEN, Keys

log = get_logger("store")
audit_log = get_logger("audit")
"""Every audit entry written is also logged here (INFO), with the entry's fields as context."""

ReportCheck = Callable[[FleetReport, int, float], Rejection | None]
"""A plausibility rule: ``(report, ttl_ms, server_time) -> rejection or None`` (see ``read_reports``)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A newly seen rejected report: its region, reason-code and reason."""

    region: str
    code: str
    reason: str


@dataclass
class ReportsRead:
    """What :meth:`Store.read_reports` found.

    Attributes:
        server_time: the Redis server's clock when the reports were read, unix seconds.
        reports: the report to use per region: the stored one when accepted, else the last
            one this store accepted for the region (if any).
        rejected: one message per newly seen rejected payload (already counted and logged).
        new: the same, as ``Rejected`` records.
        reasons: region → why its stored report is rejected now (every read, not only new).
        codes: region → the reason-code of that rejection.
    """

    server_time: float
    reports: dict[str, FleetReport] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    new: list[Rejected] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    codes: dict[str, str] = field(default_factory=dict)

EMBEDDED_URL = "embedded://"
"""The URL that selects the in-process fakeredis server (zero-setup mode)."""

def connect(url: str, *, ns: str = "default", timeout_s: float = 2.0) -> Store:
    """Build a store for ``url``.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://`` for TLS, or
            ``embedded://`` for an in-process fakeredis server.
        ns: installation namespace (the ``{ns}`` hash tag in every key).
        timeout_s: socket connect and read timeout, seconds.

    The password in ``url`` is never logged.
    """
    if url.startswith("embedded://"):
        from gtm.store.embedded import embedded_client

        client: aioredis.Redis = embedded_client()
    else:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError([f"Redis URL must start with redis://, rediss:// or unix:// (or be embedded://): "
                               f"{url.split('://', 1)[0]}://..."])
        try:
            client = aioredis.Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                health_check_interval=10,
                retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=2),
                retry_on_error=[RedisConnectionError, RedisTimeoutError],
            )
        except ValueError as exc:
            raise ConfigError([f"invalid Redis URL: {exc}"]) from exc
    return Store(client, Keys(ns))


class Store:
    """Typed access to gtm's keys. Every method raises ``StoreError`` when Redis fails."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._rejected_seen: dict[str, int | str] = {}
        self._accepted: dict[str, FleetReport] = {}

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    async def ping(self) -> float:
        """Round trip to Redis, milliseconds."""
        t0 = time.perf_counter()
        try:
            await self.client.ping()
        except RedisError as exc:
            raise StoreError(f"redis unreachable: {exc}") from exc
        return (time.perf_counter() - t0) * 1000

    # -- reports -------------------------------------------------------------------------

    async def put_report(self, report: FleetReport, ttl_s: float, *, changed: bool) -> None:
        """Write a region's latest report with an expiry that acts as the heartbeat.

        One ``SET EX`` in steady state; when ``changed`` (health or capacity moved) the report
        is also appended to the history stream and a wake-up event is published, in the same
        transaction.

        Args:
            report: the report.
            ttl_s: key expiry, seconds (rounded up to whole milliseconds).
            changed: whether this report changes the region's state.
        """
        data = report.model_dump_json()
        px = max(1, math.ceil(ttl_s * 1000))  # whole milliseconds, rounded up, never 0
        try:
            if not changed:
                await self.client.set(self.keys.report(report.region), data, px=px)
                return
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self.keys.report(report.region), data, px=px)
                pipe.xadd(
                    self.keys.reports_stream,
                    {"region": report.region, "report": data},
                    maxlen=REPORT_STREAM_MAXLEN,
                    approximate=True,
                )
                pipe.publish(self.keys.events, f"report:{report.region}")
                await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"writing report for {report.region}: {exc}") from exc

    async def get_reports(self, regions: list[str]) -> tuple[dict[str, FleetReport], list[str]]:
        """Latest reports for ``regions``, checked only against the schema.

        Returns:
            ``(reports, rejected)``: see :meth:`read_reports` (``reports`` and ``rejected``).

        Raises:
            StoreError: Redis could not be read.
        """
        read = await self.read_reports(regions)
        return read.reports, read.rejected

    async def read_reports(self, regions: list[str], check: ReportCheck | None = None) -> ReportsRead:
        """Latest reports for ``regions``, with each key's expiry and the server's clock.

        One transaction reads every report (``MGET``), each key's ``PTTL`` and the server's
        ``TIME``. A report is rejected when it does not parse, names another region than its
        key (reason-code ``malformed``), or ``check`` returns a rejection for it. A rejected
        report is counted under ``gtm:{ns}:rejected`` (field ``<region>|<reason-code>``) once
        per distinct payload and reason for the whole installation, logged once per payload
        by each reader, never raised. It is treated as no new report: when
        this store accepted a report of the region before, that last accepted report is
        returned in its place (the engine judges its age as usual, so a region whose key holds
        only rejected reports goes ``unknown`` after the report timeout).

        Args:
            regions: whose reports to read.
            check: the plausibility rule (``gtm.engine.plausibility``), called as
                ``check(report, ttl_ms, server_time)``; None checks the schema only.

        Raises:
            StoreError: Redis could not be read.
        """
        if not regions:
            return ReportsRead(server_time=0.0)
        keys = [self.keys.report(r) for r in regions]
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.mget(keys)
                for key in keys:
                    pipe.pttl(key)
                pipe.time()
                replies = await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"reading reports: {exc}") from exc
        raw, ttls, srv = replies[0], replies[1:-1], replies[-1]
        server_time = float(srv[0]) + float(srv[1]) / 1e6
        out = ReportsRead(server_time=server_time)
        for region, text, ttl in zip(regions, raw, ttls, strict=True):
            if text is None:
                continue
            rejection: tuple[str, str] | None
            try:
                rep = FleetReport.model_validate_json(text)
                if rep.region != region:
                    raise ValueError(f"report under key of {region!r} names region {rep.region!r}")
            except (ValidationError, ValueError) as exc:
                rejection = (MALFORMED, _first_line(exc))
            else:
                got = check(rep, int(ttl), server_time) if check is not None else None
                rejection = (got.code, got.reason) if got is not None else None
            if rejection is None:
                self._rejected_seen.pop(region, None)
                self._accepted[region] = rep
                out.reports[region] = rep
                continue
            code, reason = rejection
            out.reasons[region] = reason
            out.codes[region] = code
            last = self._accepted.get(region)
            if last is not None:
                out.reports[region] = last
            # The same bad payload stays under the key until it expires or is replaced:
            # reject it every time, but log it once per reader and count it once per
            # installation (every controller replica and `gtm status` read it).
            digest = hashlib.sha256(f"{code}\n{text}".encode()).hexdigest()[:32]
            if self._rejected_seen.get(region) == digest:
                continue
            self._rejected_seen[region] = digest
            msg = f"rejected report for {region}: {reason}"
            out.rejected.append(msg)
            out.new.append(Rejected(region, code, reason))
            log.warning("read_reports: %s [%s]", msg, code)
            with contextlib.suppress(RedisError):
                await self._count_rejected(region, code, digest)
        return out

    async def _count_rejected(self, region: str, code: str, digest: str) -> bool:
        """Count a rejected payload under ``region|code`` unless the installation already
        counted this payload (``gtm:{ns}:rejected-last`` holds each region's last digest)."""
        last = self.keys.rejected_last

        async def unseen(pipe: Any) -> bool:
            return bool(await pipe.hget(last, region) != digest)

        def count(pipe: Any) -> None:
            pipe.hset(last, region, digest)
            pipe.hincrby(self.keys.rejected, f"{region}|{code}", 1)

        return await self.compare_and_set([last], unseen, count)

    async def server_time(self) -> float:
        """The Redis server's clock (``TIME``), unix seconds.

        Raises:
            StoreError: Redis could not be reached.
        """
        try:
            sec, usec = await self.client.time()
        except RedisError as exc:
            raise StoreError(f"reading server time: {exc}") from exc
        return float(sec) + float(usec) / 1e6

    async def put_vantage(self, report: VantageReport, ttl_s: float, *, changed: bool) -> None:
        """Write a vantage point's latest probes of the other regions, with an expiry.

        Args:
            report: the vantage report (``report.vantage`` names the key).
            ttl_s: key expiry, seconds (rounded up to whole milliseconds).
            changed: whether a region's reachability changed: a wake-up event is published too.

        Raises:
            StoreError: Redis refused or could not be reached.
        """
        data = report.model_dump_json()
        px = max(1, math.ceil(ttl_s * 1000))
        try:
            if not changed:
                await self.client.set(self.keys.vantage(report.vantage), data, px=px)
                return
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self.keys.vantage(report.vantage), data, px=px)
                pipe.publish(self.keys.events, f"vantage:{report.vantage}")
                await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"writing vantage report for {report.vantage}: {exc}") from exc

    async def get_vantage(self, regions: list[str]) -> dict[str, VantageReport]:
        """Latest vantage reports written by ``regions``' agents, keyed by vantage region.

        A malformed one (or one under another region's key) is left out and logged once.

        Raises:
            StoreError: Redis could not be read.
        """
        if not regions:
            return {}
        try:
            raw = await self.client.mget([self.keys.vantage(r) for r in regions])
        except RedisError as exc:
            raise StoreError(f"reading vantage reports: {exc}") from exc
        out: dict[str, VantageReport] = {}
        for region, text in zip(regions, raw, strict=True):
            if text is None:
                continue
            try:
                rep = VantageReport.model_validate_json(text)
                if rep.vantage != region:
                    raise ValueError(f"vantage report under key of {region!r} names {rep.vantage!r}")
            except (ValidationError, ValueError) as exc:
                digest = hash(text)
                if self._rejected_seen.get(f"vantage:{region}") != digest:
                    self._rejected_seen[f"vantage:{region}"] = digest
                    log.warning("get_vantage: rejected vantage report of %s: %s", region, _first_line(exc))
                continue
            out[region] = rep
        return out

    async def put_bgp_state(self, state: BgpState, ttl_s: float) -> None:
        """Write a region agent's BGP speaker state with an expiry (``gtm status`` reads it).

        Args:
            state: the state (``state.region`` names the key).
            ttl_s: key expiry, seconds (rounded up to whole milliseconds).

        Raises:
            StoreError: Redis refused or could not be reached.
        """
        try:
            await self.client.set(self.keys.bgp(state.region), state.model_dump_json(),
                                  px=max(1, math.ceil(ttl_s * 1000)))
        except RedisError as exc:
            raise StoreError(f"writing BGP state for {state.region}: {exc}") from exc

    async def get_bgp_states(self, regions: list[str]) -> dict[str, BgpState]:
        """The BGP speaker states of ``regions``' agents (absent or expired ones are left out;
        a malformed one too, with a warning).

        Raises:
            StoreError: Redis could not be read.
        """
        if not regions:
            return {}
        try:
            raw = await self.client.mget([self.keys.bgp(r) for r in regions])
        except RedisError as exc:
            raise StoreError(f"reading BGP states: {exc}") from exc
        out: dict[str, BgpState] = {}
        for region, text in zip(regions, raw, strict=True):
            if text is None:
                continue
            try:
                out[region] = BgpState.model_validate_json(text)
            except ValidationError as exc:
                log.warning("get_bgp_states: unreadable BGP state of %s: %s", region, _first_line(exc))
        return out

    async def rejected_counts(self) -> dict[str, int]:
        """How many reports were rejected, by region (every reason together)."""
        return {region: sum(by.values()) for region, by in (await self.rejected_by_reason()).items()}

    async def rejected_by_reason(self) -> dict[str, dict[str, int]]:
        """How many reports were rejected, by region and reason-code
        (``gtm.engine.plausibility.REASON_CODES``; counts from before reasons were recorded
        appear under ``malformed``).

        Raises:
            StoreError: Redis could not be read.
        """
        try:
            raw = await self.client.hgetall(self.keys.rejected)
        except RedisError as exc:
            raise StoreError(f"reading rejected counts: {exc}") from exc
        out: dict[str, dict[str, int]] = {}
        for field_, value in raw.items():
            region, _, code = _str(field_).partition("|")
            by = out.setdefault(region, {})
            by[code or MALFORMED] = by.get(code or MALFORMED, 0) + int(value)
        return out

    # -- overrides -----------------------------------------------------------------------

    async def put_override(self, override: Override) -> None:
        """Set (or replace) a region's override and wake the controller."""
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self.keys.override(override.region), override.model_dump_json())
                pipe.publish(self.keys.events, f"override:{override.region}")
                await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"writing override for {override.region}: {exc}") from exc

    async def delete_override(self, region: str) -> bool:
        """Remove a region's override; returns whether one existed."""
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(self.keys.override(region))
                pipe.publish(self.keys.events, f"override:{region}")
                n, _ = await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"deleting override for {region}: {exc}") from exc
        return bool(n)

    async def delete_override_if(self, override: Override) -> bool:
        """Delete ``override.region``'s override only if it is still exactly ``override`` (an
        operator may have replaced it meanwhile); returns whether it was deleted.
        Raises ``StoreError``."""
        key = self.keys.override(override.region)

        async def same(pipe: Any) -> bool:
            return _parse_override(await pipe.get(key)) == override

        def delete(pipe: Any) -> None:
            pipe.delete(key)
            pipe.publish(self.keys.events, f"override:{override.region}")

        try:
            return await self.compare_and_set([key], same, delete)
        except RedisError as exc:
            raise StoreError(f"deleting override for {override.region}: {exc}") from exc

    async def put_override_if(self, override: Override, expect: Override | None) -> bool:
        """Set ``override.region``'s override only if the one stored is still ``expect`` (None:
        no override), and wake the controller; returns whether it was written (False: another
        operator changed it since it was read). Raises ``StoreError``."""
        key = self.keys.override(override.region)

        async def unchanged(pipe: Any) -> bool:
            return _parse_override(await pipe.get(key)) == expect

        def put(pipe: Any) -> None:
            pipe.set(key, override.model_dump_json())
            pipe.publish(self.keys.events, f"override:{override.region}")

        try:
            return await self.compare_and_set([key], unchanged, put)
        except RedisError as exc:
            raise StoreError(f"writing override for {override.region}: {exc}") from exc

    async def get_override(self, region: str) -> Override | None:
        """``region``'s override as stored (expired ones included), or None (also when it
        cannot be parsed). Raises ``StoreError``."""
        try:
            return _parse_override(_opt_str(await self.client.get(self.keys.override(region))))
        except RedisError as exc:
            raise StoreError(f"reading override for {region}: {exc}") from exc

    async def get_overrides(self) -> dict[str, Override]:
        """Every override, by region; malformed ones are logged and skipped."""
        out: dict[str, Override] = {}
        try:
            keys = [k async for k in self.client.scan_iter(match=self.keys.override_pattern)]
            values = await self.client.mget(keys) if keys else []
        except RedisError as exc:
            raise StoreError(f"reading overrides: {exc}") from exc
        for key, text in zip(keys, values, strict=True):
            if text is None:
                continue
            try:
                ov = Override.model_validate_json(text)
            except ValidationError as exc:
                log.warning("get_overrides: skipping malformed %s: %s", key, _first_line(exc))
                continue
            out[ov.region] = ov
        return out

    async def clear_damping(self, region: str, at: float, actor: str, reason: str) -> None:
        """Record that an operator cleared ``region``'s flap damping at ``at`` (unix seconds)
        and wake the controller. Raises ``StoreError``."""
        doc = json.dumps({"at": at, "actor": actor, "reason": reason})
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(self.keys.damping_cleared, region, doc)
                pipe.publish(self.keys.events, f"undamp:{region}")
                await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"clearing flap damping of {region}: {exc}") from exc

    async def get_damping_cleared(self) -> dict[str, float]:
        """Region → unix seconds its flap damping was last cleared; malformed entries are
        logged and skipped. Raises ``StoreError``."""
        try:
            raw = await self.client.hgetall(self.keys.damping_cleared)
        except RedisError as exc:
            raise StoreError(f"reading flap damping clears: {exc}") from exc
        out: dict[str, float] = {}
        for region, text in raw.items():
            try:
                at = float(json.loads(text)["at"])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("get_damping_cleared: skipping malformed entry for %s: %s", region, exc)
                continue
            if math.isfinite(at):
                out[_str(region)] = at
        return out

    # -- desired / applied state ---------------------------------------------------------

    async def put_desired(self, state: DesiredState, *, lease_value: str | None = None) -> None:
        """Store the desired state; with ``lease_value`` only while that lease is held.

        Raises:
            LeaseLostError: ``lease_value`` no longer matches the leader key (fencing).
            StoreError: Redis failed.
        """
        data = state.to_json()
        try:
            if lease_value is None:
                await self.client.set(self.keys.desired, data)
                return
            ok = await self._if_leader(lease_value, lambda pipe: pipe.set(self.keys.desired, data))
        except RedisError as exc:
            raise StoreError(f"writing desired state: {exc}") from exc
        if not ok:
            raise LeaseLostError("leader lease lost; desired state not written")

    async def put_policy_snapshot(self, doc: str, *, lease_value: str) -> None:
        """Store the policy in force (``Config`` as JSON, see ``gtm.config.snapshot``) while
        ``lease_value`` holds the lease, so a controller that starts while its own policy files
        are broken can start from it. Raises ``LeaseLostError`` / ``StoreError``."""
        try:
            ok = await self._if_leader(lease_value, lambda pipe: pipe.set(self.keys.policy_snapshot, doc))
        except RedisError as exc:
            raise StoreError(f"writing the policy snapshot: {exc}") from exc
        if not ok:
            raise LeaseLostError("leader lease lost; policy snapshot not written")

    async def get_policy_snapshot(self) -> str | None:
        """The stored policy snapshot (JSON), or None. Raises ``StoreError``."""
        try:
            text = await self.client.get(self.keys.policy_snapshot)
        except RedisError as exc:
            raise StoreError(f"reading the policy snapshot: {exc}") from exc
        return text if isinstance(text, str) else None

    async def _if_leader(self, lease_value: str, op: Callable[[Any], Any]) -> bool:
        """Run ``op(pipeline)`` in a MULTI/EXEC only while ``lease_value`` holds the lease."""

        async def holds(pipe: Any) -> bool:
            return bool(await pipe.get(self.keys.leader) == lease_value)

        return await self.compare_and_set([self.keys.leader], holds, op)

    async def compare_and_set(
        self,
        watch: Sequence[str],
        check: Callable[[Any], Awaitable[bool]],
        write: Callable[[Any], Any],
    ) -> bool:
        """The one optimistic transaction of the store: WATCH ``watch``, let ``check(pipe)``
        read them (immediate mode) and decide, then ``write(pipe)`` in MULTI/EXEC.

        WATCH makes the check and the write atomic without Lua, so the embedded fakeredis
        store behaves the same as a real server.

        Args:
            watch: keys whose change between the check and the write cancels the write.
            check: reads through the pipeline; False leaves everything as it is. It may raise
                (e.g. ``LeaseLostError``); the watch is then dropped.
            write: queues the writes on the pipeline (MULTI already started).

        Returns:
            True when written; False when ``check`` said no or a watched key changed meanwhile.

        Raises:
            RedisError: untranslated (callers name what they were writing in a ``StoreError``).
        """
        async with self.client.pipeline(transaction=True) as typed_pipe:
            pipe: Any = typed_pipe  # redis-py leaves unwatch() and multi() unannotated
            try:
                await pipe.watch(*watch)
                if not await check(pipe):
                    await pipe.unwatch()
                    return False
                pipe.multi()
                write(pipe)
                await pipe.execute()
            except WatchError:
                return False
        return True

    async def get_desired(self) -> DesiredState | None:
        """The last stored desired state, or None (also when it cannot be parsed)."""
        try:
            text = await self.client.get(self.keys.desired)
        except RedisError as exc:
            raise StoreError(f"reading desired state: {exc}") from exc
        if text is None:
            return None
        try:
            return DesiredState.from_json(_str(text))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("get_desired: stored desired state unreadable: %s", exc)
            return None

    async def put_applied(self, provider: str, info: dict[str, Any]) -> None:
        """Record what a provider last applied (generation, digest, time, error)."""
        try:
            await self.client.set(self.keys.applied(provider), json.dumps(info, sort_keys=True))
        except RedisError as exc:
            raise StoreError(f"writing applied state: {exc}") from exc

    async def get_applied(self, provider: str) -> dict[str, Any] | None:
        try:
            text = await self.client.get(self.keys.applied(provider))
        except RedisError as exc:
            raise StoreError(f"reading applied state: {exc}") from exc
        return None if text is None else dict(json.loads(text))

    # -- audit ---------------------------------------------------------------------------

    async def append_audit(self, entry: AuditEntry) -> str:
        """Append one audit entry (``AuditEntry.to_fields``) and log it on ``gtm.audit`` with
        its fields as context (``--log-format json`` writes them as JSON fields); returns its
        stream id. Raises ``StoreError`` (then nothing is logged)."""
        try:
            entry_id = str(
                await self.client.xadd(
                    self.keys.audit, entry.to_fields(),  # type: ignore[arg-type]
                    maxlen=AUDIT_STREAM_MAXLEN, approximate=True,
                )
            )
        except RedisError as exc:
            raise StoreError(f"appending audit entry: {exc}") from exc
        audit_log.info("append_audit: %s", entry.summary(), extra=entry.log_fields())
        return entry_id

    async def read_audit(self, count: int = 50) -> list[tuple[str, dict[str, str]]]:
        """The newest ``count`` audit entries, newest first."""
        try:
            rows = await self.client.xrevrange(self.keys.audit, count=count)
        except RedisError as exc:
            raise StoreError(f"reading audit: {exc}") from exc
        return [(_str(i), {_str(k): _str(v) for k, v in f.items()}) for i, f in rows or [] if i is not None and f]

    # -- leader lease and fencing --------------------------------------------------------

    async def acquire_lease(self, owner: str, ttl_ms: int) -> tuple[str, int] | None:
        """Try to become leader.

        Returns:
            ``(lease_value, fencing_token)`` when acquired, else None. The token grows by one
            with each new leader (INCR after the lease is won, never on a failed attempt), so
            writes from an older leader can be refused.
        """
        try:
            if await self.client.exists(self.keys.leader):
                return None  # cheap path for followers: no token is spent on a failed attempt
            claim = f"{owner}|claim-{time.time_ns()}"
            if not await self.client.set(self.keys.leader, claim, nx=True, px=ttl_ms):
                return None
            token = int(await self.client.incr(self.keys.epoch))
            value = f"{owner}|{token}"
            # Swap the claim for the tokened value only while the claim is still ours.

            async def still_ours(pipe: Any) -> bool:
                return bool(await pipe.get(self.keys.leader) == claim)

            if not await self.compare_and_set(
                [self.keys.leader], still_ours, lambda pipe: pipe.set(self.keys.leader, value, px=ttl_ms)
            ):
                return None
        except RedisError as exc:
            raise StoreError(f"acquiring lease: {exc}") from exc
        return value, token

    async def renew_lease(self, lease_value: str, ttl_ms: int) -> None:
        """Extend the lease. Raises ``LeaseLostError`` if another owner holds it now."""
        try:
            ok = await self._if_leader(lease_value, lambda pipe: pipe.pexpire(self.keys.leader, ttl_ms))
        except RedisError as exc:
            raise StoreError(f"renewing lease: {exc}") from exc
        if not ok:
            raise LeaseLostError("leader lease lost")

    async def release_lease(self, lease_value: str) -> None:
        """Give the lease up if still held."""
        try:
            await self._if_leader(lease_value, lambda pipe: pipe.delete(self.keys.leader))
        except RedisError as exc:
            raise StoreError(f"releasing lease: {exc}") from exc

    async def leader(self) -> str | None:
        """The current lease value (``owner|token``), or None."""
        try:
            v = await self.client.get(self.keys.leader)
        except RedisError as exc:
            raise StoreError(f"reading leader: {exc}") from exc
        return None if v is None else str(v)

    # -- rollouts ------------------------------------------------------------------------
    # Rollout state is stored as the JSON text of ``gtm.engine.rollout.RolloutState``; the
    # store keeps no knowledge of its shape. Writes are compare-and-set against the text read
    # before, so the controller's ticks and operators' commands never overwrite each other.

    async def get_rollouts(self, names: list[str]) -> dict[str, str]:
        """Stored rollout states (JSON text) by name; names without one are left out."""
        if not names:
            return {}
        try:
            raw = await self.client.mget([self.keys.rollout(n) for n in names])
        except RedisError as exc:
            raise StoreError(f"reading rollouts: {exc}") from exc
        return {n: _str(t) for n, t in zip(names, raw, strict=True) if t is not None}

    async def put_rollout(
        self, name: str, data: str, *, expect: str | None, lease_value: str | None = None
    ) -> bool:
        """Write a rollout's state if the stored text is still ``expect`` (None: absent).

        With ``lease_value`` the write also needs that lease to be held (fencing: a deposed
        leader cannot record a step). Publishes ``rollout:<name>`` to wake the controller.

        Returns:
            False when the stored state changed since it was read (re-read and retry).

        Raises:
            LeaseLostError: ``lease_value`` no longer holds the lease.
            StoreError: Redis failed.
        """
        key = self.keys.rollout(name)
        watch = [key, *([self.keys.leader] if lease_value is not None else [])]

        async def unchanged(pipe: Any) -> bool:
            if lease_value is not None and await pipe.get(self.keys.leader) != lease_value:
                raise LeaseLostError("leader lease lost; rollout state not written")
            return bool(await pipe.get(key) == expect)

        def put(pipe: Any) -> None:
            pipe.set(key, data)
            pipe.publish(self.keys.events, f"rollout:{name}")

        try:
            return await self.compare_and_set(watch, unchanged, put)
        except RedisError as exc:
            raise StoreError(f"writing rollout {name}: {exc}") from exc

    async def delete_rollout(self, name: str) -> bool:
        """Remove a rollout's state (tests and clean-up); returns whether it existed."""
        try:
            return bool(await self.client.delete(self.keys.rollout(name)))
        except RedisError as exc:
            raise StoreError(f"deleting rollout {name}: {exc}") from exc

    # -- drills --------------------------------------------------------------------------
    # One drill at a time per installation: ``gtm:{ns}:drill`` holds its DrillLock with an
    # expiry the running drill renews, so the lock of a drill that died lapses by itself.

    async def acquire_drill(self, lock: DrillLock, ttl_s: float) -> DrillLock | None:
        """Take the drill lock for ``lock`` (SET NX PX). Returns None when taken, else the lock
        of the drill already running (nothing written). Raises ``StoreError``."""
        try:
            ok = await self.client.set(self.keys.drill, lock.model_dump_json(), nx=True, px=max(1, int(ttl_s * 1000)))
            if ok:
                await self.publish("drill")
                return None
            running = await self.get_drill()
        except RedisError as exc:
            raise StoreError(f"taking the drill lock: {exc}") from exc
        # The holder's key lapsed between SET and GET: report it as running anyway; try again later.
        return running if running is not None else lock

    async def renew_drill(self, lock: DrillLock, ttl_s: float, *, expect: DrillLock) -> bool:
        """Replace the drill lock ``expect`` by ``lock`` (a new phase or expiry) with a new TTL,
        only while ``expect`` still holds it; returns whether it did. Raises ``StoreError``."""
        key = self.keys.drill

        async def ours(pipe: Any) -> bool:
            return _opt_str(await pipe.get(key)) == expect.model_dump_json()

        def put(pipe: Any) -> None:
            pipe.set(key, lock.model_dump_json(), px=max(1, int(ttl_s * 1000)))
            pipe.publish(self.keys.events, "drill")

        try:
            return await self.compare_and_set([key], ours, put)
        except RedisError as exc:
            raise StoreError(f"renewing the drill lock: {exc}") from exc

    async def release_drill(self, lock: DrillLock) -> bool:
        """Remove the drill lock if it is still ``lock``; returns whether it did."""
        key = self.keys.drill

        async def ours(pipe: Any) -> bool:
            return _opt_str(await pipe.get(key)) == lock.model_dump_json()

        def delete(pipe: Any) -> None:
            pipe.delete(key)
            pipe.publish(self.keys.events, "drill")

        try:
            return await self.compare_and_set([key], ours, delete)
        except RedisError as exc:
            raise StoreError(f"releasing the drill lock: {exc}") from exc

    async def get_drill(self) -> DrillLock | None:
        """The drill running now, or None (also when the stored lock cannot be parsed)."""
        try:
            text = _opt_str(await self.client.get(self.keys.drill))
        except RedisError as exc:
            raise StoreError(f"reading the drill lock: {exc}") from exc
        if text is None:
            return None
        try:
            return DrillLock.model_validate_json(text)
        except ValidationError as exc:
            log.warning("get_drill: malformed lock: %s", _first_line(exc))
            return None

    # -- events --------------------------------------------------------------------------

    async def publish(self, event: str) -> None:
        """Publish a wake-up event (``report:<region>``, ``override:<region>``...)."""
        try:
            await self.client.publish(self.keys.events, event)
        except RedisError as exc:
            raise StoreError(f"publishing event: {exc}") from exc

    async def events(self) -> AsyncIterator[str]:
        """Yield wake-up events until cancelled. Raises ``StoreError`` if the connection drops."""
        pubsub: Any = self.client.pubsub()  # its aclose() is unannotated
        try:
            await pubsub.subscribe(self.keys.events)
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None and msg.get("type") == "message":
                    yield str(msg["data"])
        except RedisError as exc:
            raise StoreError(f"event subscription: {exc}") from exc
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()


def _str(value: bytes | str) -> str:
    """A Redis reply as text (the client decodes replies; fakeredis and the stubs may not say so)."""
    return value.decode() if isinstance(value, bytes) else value


def _opt_str(value: bytes | str | None) -> str | None:
    return None if value is None else _str(value)


def _parse_override(text: str | None) -> Override | None:
    if text is None:
        return None
    try:
        return Override.model_validate_json(text)
    except ValidationError:
        return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(text[:3]) if text else type(exc).__name__
