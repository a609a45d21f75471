"""The Redis store, against a real Redis server and against the embedded fakeredis mode.

The real server (GTM_TEST_REDIS_URL, default 127.0.0.1:6379) is shared: every test uses its own
namespace and deletes only its own keys. One test starts its own ``redis-server`` on a spare port and kills it mid-test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import redis
import redis.asyncio as aioredis

from gtm.engine import plan
from gtm.errors import LeaseLostError, StoreError
from gtm.models.audit import AuditEntry
from gtm.models.plan import DesiredState
from gtm.store import Store, connect
from gtm.store.keys import Keys
from gtm.testing.ports import free_port
from tests.factories import (
    FOUR_REGIONS,
    T0,
    healthy_reports,
    make_inventory,
    make_override,
    make_policy,
    make_report,
    skip_or_fail,
)
from tests.support.redis import REDIS_HOST, REDIS_PORT
from tests.support.wait import wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _desired(now: float = T0, spare: float = 10.0) -> DesiredState:
    reps = healthy_reports(now, dict.fromkeys(FOUR_REGIONS, spare))
    reps["us-west-2"] = make_report("us-west-2", now, spare=spare * 3)
    return plan(make_policy(), make_inventory(), reps, {}, None, now, digest="sha256:x")


async def _cleanup(client: aioredis.Redis, ns: str) -> None:
    keys = [k async for k in client.scan_iter(match=f"gtm:{{{ns}}}:*")]
    if keys:
        await client.delete(*keys)


@pytest.fixture(params=["redis", "fakeredis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    ns = f"test-{uuid4().hex}"
    if request.param == "redis":
        client = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT, decode_responses=True)
        try:
            await client.ping()
        except redis.RedisError as exc:  # pragma: no cover - environment without Redis
            await client.aclose()
            skip_or_fail(f"no Redis server at {REDIS_HOST}:{REDIS_PORT}: {exc}")
        st = Store(client, Keys(ns))
    else:
        st = connect("embedded://", ns=ns)
    try:
        yield st
    finally:
        await _cleanup(st.client, ns)
        await st.aclose()


# -- reports ---------------------------------------------------------------------------------


async def test_report_round_trip_and_expiry(store: Store) -> None:
    rep = make_report("eu-west-1", time.time(), spare=12.5, seq=7)
    await store.put_report(rep, ttl_s=0.3, changed=False)
    reports, rejected = await store.get_reports(["eu-west-1", "us-east-1"])
    assert reports == {"eu-west-1": rep}
    assert rejected == []
    pttl = await store.client.pttl(store.keys.report("eu-west-1"))
    assert 0 < pttl <= 300
    # Not a state change: no history, no event.
    assert await store.client.xlen(store.keys.reports_stream) == 0
    await asyncio.sleep(0.5)
    assert await store.get_reports(["eu-west-1"]) == ({}, [])
    assert await store.get_reports([]) == ({}, [])


async def test_sub_millisecond_ttl_rounds_up(store: Store) -> None:
    """The TTL is rounded up to whole milliseconds: never 0 (which Redis refuses)."""
    rep = make_report("eu-west-1", time.time())
    await store.put_report(rep, ttl_s=0.0004, changed=False)
    await store.put_report(rep, ttl_s=0.0004, changed=True)
    await asyncio.sleep(0.05)
    assert await store.get_reports(["eu-west-1"]) == ({}, [])


async def test_changed_report_appends_history_and_publishes(store: Store) -> None:
    rep = make_report("us-east-1", time.time(), healthy=False, fail=2)
    events = store.events()
    first = asyncio.ensure_future(anext(events))
    try:
        # Wait until the subscription is live, so the publish cannot be missed.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            subs = await store.client.pubsub_numsub(store.keys.events)
            if subs and subs[0][1] >= 1:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("events() never subscribed")
        await store.put_report(rep, ttl_s=30, changed=True)
        assert await asyncio.wait_for(first, 5) == "report:us-east-1"
    finally:
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await first
        await events.aclose()
    rows = await store.client.xrange(store.keys.reports_stream)
    assert len(rows) == 1
    _, fields = rows[0]
    assert fields["region"] == "us-east-1"
    assert json.loads(fields["report"]) == json.loads(rep.model_dump_json())
    reports, _ = await store.get_reports(["us-east-1"])
    assert reports["us-east-1"] == rep


async def test_malformed_report_is_rejected_and_counted(store: Store) -> None:
    good = make_report("us-east-1", time.time())
    await store.put_report(good, ttl_s=30, changed=False)
    await store.client.set(store.keys.report("eu-west-1"), "{this is not json")
    await store.client.set(store.keys.report("eu-central-1"), json.dumps({"region": "eu-central-1"}))
    regions = ["eu-central-1", "eu-west-1", "us-east-1"]
    reports, rejected = await store.get_reports(regions)
    assert reports == {"us-east-1": good}
    assert len(rejected) == 2
    assert rejected[0].startswith("rejected report for eu-central-1")
    assert rejected[1].startswith("rejected report for eu-west-1")
    assert await store.rejected_counts() == {"eu-central-1": 1, "eu-west-1": 1}
    # The same bad payload read again is still left out, but counted (and logged) once.
    reports, rejected = await store.get_reports(regions)
    assert reports == {"us-east-1": good} and rejected == []
    assert await store.rejected_counts() == {"eu-central-1": 1, "eu-west-1": 1}
    # A new bad payload counts again.
    await store.client.set(store.keys.report("eu-west-1"), "{still not json")
    _, rejected = await store.get_reports(regions)
    assert len(rejected) == 1
    assert await store.rejected_counts() == {"eu-central-1": 1, "eu-west-1": 2}


async def test_report_under_another_regions_key_is_rejected(store: Store) -> None:
    impostor = make_report("us-east-1", time.time())
    await store.client.set(store.keys.report("eu-west-1"), impostor.model_dump_json())
    reports, rejected = await store.get_reports(["eu-west-1"])
    assert reports == {}
    assert len(rejected) == 1
    assert "names region 'us-east-1'" in rejected[0]
    assert await store.rejected_counts() == {"eu-west-1": 1}


# -- overrides -------------------------------------------------------------------------------


async def test_overrides_put_get_delete(store: Store) -> None:
    drain = make_override("us-east-1", "drain", since=T0, reason="kernel upgrade")
    cordon = make_override("eu-west-1", "cordon", since=T0 + 1, expires_at=T0 + 3600)
    assert await store.get_overrides() == {}
    await store.put_override(drain)
    await store.put_override(cordon)
    assert await store.get_overrides() == {"us-east-1": drain, "eu-west-1": cordon}
    replaced = make_override("us-east-1", "cordon", since=T0 + 2, reason="changed mind")
    await store.put_override(replaced)
    assert (await store.get_overrides())["us-east-1"] == replaced
    assert await store.delete_override("us-east-1") is True
    assert await store.delete_override("us-east-1") is False
    assert await store.get_overrides() == {"eu-west-1": cordon}
    # A malformed override is skipped, not raised.
    await store.client.set(store.keys.override("us-west-2"), "garbage")
    assert await store.get_overrides() == {"eu-west-1": cordon}


async def test_delete_override_if_unchanged(store: Store) -> None:
    old = make_override("us-east-1", "drain", since=T0, expires_at=T0 + 10)
    await store.put_override(old)
    newer = make_override("us-east-1", "cordon", since=T0 + 5, reason="replaced meanwhile")
    await store.put_override(newer)
    assert await store.delete_override_if(old) is False, "an operator replaced it: keep theirs"
    assert (await store.get_overrides())["us-east-1"] == newer
    assert await store.delete_override_if(newer) is True
    assert await store.get_overrides() == {}
    assert await store.delete_override_if(newer) is False


async def test_flap_damping_clears_put_get_and_wake_the_controller(store: Store) -> None:
    assert await store.get_damping_cleared() == {}
    events = store.events()
    listening = asyncio.ensure_future(events.__anext__())

    async def subscribed() -> bool:
        counts = dict(await store.client.pubsub_numsub(store.keys.events))
        return bool(counts.get(store.keys.events))

    await wait_until(subscribed)  # the subscription is in place before the write
    await store.clear_damping("us-west-2", T0 + 5, "alice", "NIC replaced")
    assert await asyncio.wait_for(listening, 5) == "undamp:us-west-2"
    await events.aclose()
    await store.clear_damping("us-west-2", T0 + 9, "bob", "again")
    assert await store.get_damping_cleared() == {"us-west-2": T0 + 9}
    doc = json.loads(await store.client.hget(store.keys.damping_cleared, "us-west-2"))
    assert doc == {"at": T0 + 9, "actor": "bob", "reason": "again"}
    # A malformed entry is skipped, not raised.
    await store.client.hset(store.keys.damping_cleared, "eu-west-1", "garbage")
    await store.client.hset(store.keys.damping_cleared, "us-east-1", json.dumps({"at": "NaN"}))
    assert await store.get_damping_cleared() == {"us-west-2": T0 + 9}


# -- desired state, fencing, lease -----------------------------------------------------------


async def test_desired_state_round_trip(store: Store) -> None:
    assert await store.get_desired() is None
    state = _desired()
    await store.put_desired(state)
    back = await store.get_desired()
    assert back == state
    assert back is not None and back.routing_digest() == state.routing_digest()
    await store.client.set(store.keys.desired, '{"generation": 1}')
    assert await store.get_desired() is None  # unreadable: None, never raised


async def test_applied_round_trip(store: Store) -> None:
    assert await store.get_applied("route53") is None
    info = {"generation": 3, "digest": "abc", "error": None}
    await store.put_applied("route53", info)
    assert await store.get_applied("route53") == info


async def test_lease_acquire_renew_release_and_tokens(store: Store) -> None:
    a = await store.acquire_lease("ctl-a", ttl_ms=5000)
    assert a is not None
    value_a, token_a = a
    assert value_a == f"ctl-a|{token_a}"
    assert await store.leader() == value_a
    assert await store.acquire_lease("ctl-b", ttl_ms=5000) is None  # held
    await store.renew_lease(value_a, ttl_ms=20_000)
    assert 5000 < await store.client.pttl(store.keys.leader) <= 20_000
    await store.release_lease(value_a)
    assert await store.leader() is None
    await store.release_lease(value_a)  # idempotent
    with pytest.raises(LeaseLostError):
        await store.renew_lease(value_a, ttl_ms=5000)
    b = await store.acquire_lease("ctl-b", ttl_ms=5000)
    assert b is not None
    value_b, token_b = b
    assert token_b > token_a
    assert await store.leader() == value_b
    # Releasing with a stale value does not remove the new leader.
    await store.release_lease(value_a)
    assert await store.leader() == value_b


async def test_fenced_put_desired_refused_after_takeover(store: Store) -> None:
    a = await store.acquire_lease("ctl-a", ttl_ms=150)
    assert a is not None
    value_a, token_a = a
    first = _desired(T0)
    await store.put_desired(first, lease_value=value_a)
    assert await store.get_desired() == first
    await asyncio.sleep(0.3)  # A stalls; its lease lapses
    b = await store.acquire_lease("ctl-b", ttl_ms=5000)
    assert b is not None
    value_b, token_b = b
    assert token_b > token_a
    stale = _desired(T0 + 10, spare=99.0)
    with pytest.raises(LeaseLostError):
        await store.put_desired(stale, lease_value=value_a)
    assert await store.get_desired() == first  # the stale leader wrote nothing
    with pytest.raises(LeaseLostError):
        await store.renew_lease(value_a, ttl_ms=5000)
    newer = _desired(T0 + 20, spare=5.0)
    await store.put_desired(newer, lease_value=value_b)
    assert await store.get_desired() == newer


# -- audit -----------------------------------------------------------------------------------


async def test_audit_append_and_read_newest_first(store: Store) -> None:
    from gtm.models.audit import AuditDecision, AuditEntry

    ids = []
    entries = [
        AuditEntry(ts=1000.0 + i, action=f"change-{i}", region="eu-west-1", actor="ops", via="cli",
                   fencing_token=7, overridden_safety=["a", "b"] if i == 4 else [],
                   decisions=[AuditDecision(subject="pool default", action="weight 255 -> 0", reason="drain")])
        for i in range(5)
    ]
    for e in entries:
        ids.append(await store.append_audit(e))
    assert len(set(ids)) == 5
    rows = await store.read_audit(count=10)
    assert [i for i, _ in rows] == list(reversed(ids))
    assert [f["action"] for _, f in rows] == [f"change-{i}" for i in (4, 3, 2, 1, 0)]
    newest = rows[0][1]
    assert newest == {
        "ts": "1004.0", "action": "change-4", "region": "eu-west-1", "actor": "ops", "via": "cli",
        "fencing_token": "7", "overridden_safety": '["a", "b"]',
        "decisions": '[{"action": "weight 255 -> 0", "reason": "drain", "subject": "pool default"}]',
    }
    assert AuditEntry.from_fields(newest) == entries[4], "the stream fields read back as the entry written"
    assert [f["action"] for _, f in await store.read_audit(count=2)] == ["change-4", "change-3"]


def test_audit_entry_reads_fields_of_older_versions() -> None:
    from gtm.models.audit import AuditEntry

    old = {"ts": "1700000000.5", "action": "drain --force", "region": "eu-west-1", "actor": "ops",
           "reason": "driver upgrade", "expires_at": "null", "overridden_safety": '["min_healthy_regions 2"]',
           "what": "a field no version knows"}
    entry = AuditEntry.from_fields(old)
    assert (entry.action, entry.region, entry.overridden_safety) == ("drain --force", "eu-west-1",
                                                                     ["min_healthy_regions 2"])
    assert entry.expires_at is None and entry.ts == 1700000000.5
    with pytest.raises(ValueError, match="not an audit entry"):
        AuditEntry.from_fields({"action": "no timestamp"})


# -- Redis going away ------------------------------------------------------------------------


def _start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(workdir), "--protected-mode", "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5) as c:
                c.ping()
            return proc
        except redis.RedisError:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}") from None
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError("redis-server did not start")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """A private redis-server on a spare port; every process started is killed after."""
    if not Path(REDIS_SERVER).exists():  # pragma: no cover
        skip_or_fail("redis-server not installed")
    port = free_port()
    procs = [_start_redis(port, tmp_path)]
    try:
        yield port, procs
    finally:
        for p in procs:
            _kill(p)


async def test_store_errors_when_redis_dies_and_recovers(
    own_redis: tuple[int, list[subprocess.Popen[bytes]]], tmp_path: Path
) -> None:
    port, procs = own_redis
    store = connect(f"redis://127.0.0.1:{port}/0", ns=uuid4().hex, timeout_s=0.5)
    rep = make_report("eu-west-1", time.time())
    try:
        await store.put_report(rep, ttl_s=30, changed=True)
        assert (await store.get_reports(["eu-west-1"]))[0] == {"eu-west-1": rep}
        events = store.events()
        waiting = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.2)

        _kill(procs[0])  # Redis dies mid-test

        with pytest.raises(StoreError):
            await asyncio.wait_for(waiting, 10)
        await events.aclose()
        calls = [
            store.ping(),
            store.put_report(rep, ttl_s=30, changed=False),
            store.put_report(rep, ttl_s=30, changed=True),
            store.get_reports(["eu-west-1"]),
            store.get_overrides(),
            store.put_override(make_override("eu-west-1")),
            store.get_desired(),
            store.acquire_lease("ctl", 1000),
            store.renew_lease("ctl|1", 1000),
            store.append_audit(AuditEntry(ts=1.0, action="x")),
            store.read_audit(),
            store.publish("wake"),
        ]
        for call in calls:
            with pytest.raises(StoreError) as info:
                await call
            assert not isinstance(info.value, LeaseLostError)

        procs.append(_start_redis(port, tmp_path))  # and comes back (empty)

        assert await store.ping() >= 0
        assert await store.get_reports(["eu-west-1"]) == ({}, [])
        await store.put_report(rep, ttl_s=30, changed=True)
        assert (await store.get_reports(["eu-west-1"]))[0] == {"eu-west-1": rep}
        lease = await store.acquire_lease("ctl", 5000)
        assert lease is not None
    finally:
        await store.aclose()
