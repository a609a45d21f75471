"""Google Cloud DNS provider against a local fake of the v1 REST API (real HTTP on 127.0.0.1).

The fake (``tests/support/clouddns_server.py``) checks changes the way Cloud DNS does (atomic,
409 on a duplicate addition, 412 on a deletion that does not match exactly, ``pending`` then
``done``) and counts every request, so the tests assert API traffic, not just outcomes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from gtm.engine.planner import plan
from gtm.errors import ConfigError, PartialApplyError, PermanentProviderError, TemporaryProviderError
from gtm.models.plan import DesiredState
from gtm.models.policy import ProviderConfig
from gtm.providers.clouddns import DARK_VALUE, CloudDnsProvider
from gtm.providers.records import Plan
from gtm.providers.registry import build_provider
from tests.factories import (
    FOUR_REGIONS,
    T0,
    ZONE,
    healthy_reports,
    make_inventory,
    make_policy,
    make_report,
    make_service,
)
from tests.support.clouddns_server import FakeCloudDns

PROJECT = "test-project"
MZ = "gtm-zone"
FQDN = f"chat.{ZONE}"
EU_POOL = f"eu.gtm-pool.{FQDN}"
DEFAULT_POOL = f"default.gtm-pool.{FQDN}"
GEO = {"continent:EU": "europe-west1", "*": "us-central1"}
ADDR = {"eu-central-1": "192.0.2.10", "eu-west-1": "192.0.2.11", "us-east-1": "192.0.2.12", "us-west-2": "192.0.2.13"}


# -- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeCloudDns]:
    with FakeCloudDns(PROJECT, page_size=3) as f:  # small pages: every observe paginates
        f.add_zone(MZ, ZONE)
        yield f


def make_provider(fake: FakeCloudDns, **kw: Any) -> CloudDnsProvider:
    opts: dict[str, Any] = dict(
        project=PROJECT,
        api_endpoint=fake.url,
        anonymous=True,
        poll_interval_s=0.01,
        poll_timeout_s=5.0,
        geo_locations=GEO,
    )
    opts.update(kw)
    return CloudDnsProvider("gcp", owner_id="gtm", zones=[ZONE], **opts)


@pytest.fixture
async def provider(fake: FakeCloudDns) -> AsyncIterator[CloudDnsProvider]:
    p = make_provider(fake)
    yield p
    await p.aclose()


def steady_state() -> DesiredState:
    return plan(make_policy(), make_inventory(), healthy_reports(T0, list(FOUR_REGIONS)), {}, None, T0)


def failover_state(previous: DesiredState, down: str = "us-east-1", policy: Any = None) -> DesiredState:
    now = T0 + 5
    reports = healthy_reports(now, list(FOUR_REGIONS))
    for region in [down] if isinstance(down, str) else down:
        reports[region] = make_report(region, now, healthy=False, fail=3)
    return plan(policy or make_policy(), make_inventory(), reports, {}, previous, now)


def rrset(fake: FakeCloudDns, name: str, rdtype: str) -> dict[str, Any] | None:
    return fake.rrsets(MZ).get((name + ".", rdtype))


def wrr_items(fake: FakeCloudDns, name: str) -> dict[str, float]:
    rs = rrset(fake, name, "A")
    assert rs is not None, f"no A record set at {name}"
    return {i["rrdatas"][0]: i["weight"] for i in rs["routingPolicy"]["wrr"]["items"]}


def geo_items(fake: FakeCloudDns) -> dict[str, list[str]]:
    rs = rrset(fake, FQDN, "CNAME")
    assert rs is not None
    return {i["location"]: i["rrdatas"] for i in rs["routingPolicy"]["geo"]["items"]}


async def one_plan(p: CloudDnsProvider, state: DesiredState) -> Plan:
    plans = await p.plan_state(state)
    assert len(plans) == 1
    return plans[0]


# -- rendering (pure) --------------------------------------------------------------------------------


def test_render_segments_as_wrr_pools_behind_a_geo_cname(fake: FakeCloudDns) -> None:
    records = {(r.name, r.rdtype): r for r in make_provider(fake).render(steady_state(), ZONE)}
    assert set(records) == {(FQDN, "CNAME"), (EU_POOL, "A"), (DEFAULT_POOL, "A")}
    assert records[(FQDN, "CNAME")].values == (
        f"location=europe-west1 {EU_POOL}.",
        f"location=us-central1 {DEFAULT_POOL}.",
    )
    assert records[(EU_POOL, "A")].values == ("weight=255 192.0.2.10", "weight=255 192.0.2.11")
    assert len(records[(DEFAULT_POOL, "A")].values) == 4


def test_render_dark_pinned_segment_keeps_its_geo_item_and_answers_nothing(fake: FakeCloudDns) -> None:
    policy = make_policy(on_all_unhealthy="fail-open")
    state = failover_state(steady_state(), down=["eu-central-1", "eu-west-1"], policy=policy)
    records = {(r.name, r.rdtype): r for r in make_provider(fake).render(state, ZONE)}
    assert (EU_POOL, "A") not in records
    assert records[(EU_POOL, "TXT")].values == (DARK_VALUE,)
    assert f"location=europe-west1 {EU_POOL}." in records[(FQDN, "CNAME")].values  # no nearest-item fallback
    assert records[(DEFAULT_POOL, "A")].values == ("weight=255 192.0.2.12", "weight=255 192.0.2.13")


def test_render_single_catch_all_segment_sits_at_the_service_name(fake: FakeCloudDns) -> None:
    policy = make_policy([make_service()])
    state = plan(policy, make_inventory(), healthy_reports(T0, list(FOUR_REGIONS)), {}, None, T0)
    records = make_provider(fake).render(state, ZONE)
    assert [(r.name, r.rdtype, r.set_identifier) for r in records] == [(FQDN, "A", "wrr")]


def test_render_without_catch_all_sends_unmatched_locations_to_a_dark_name(fake: FakeCloudDns) -> None:
    state = steady_state()  # the engine always adds a catch-all segment: drop it to test the gap
    svc = state.services[FQDN]
    svc = dataclasses.replace(svc, segments=tuple(r for r in svc.segments if not r.is_default))
    state = dataclasses.replace(state, services={FQDN: svc})
    records = {(r.name, r.rdtype): r for r in make_provider(fake).render(state, ZONE)}
    nomatch = f"nomatch.gtm-pool.{FQDN}"
    assert records[(nomatch, "TXT")].values == (DARK_VALUE,)
    assert f"location=us-central1 {nomatch}." in records[(FQDN, "CNAME")].values


def test_pinned_segment_without_a_location_is_refused_even_when_not_strict(fake: FakeCloudDns) -> None:
    p = make_provider(fake, strict=False, geo_locations={"*": "us-central1"})
    with pytest.raises(PermanentProviderError, match="pinned"):
        p.render(steady_state(), ZONE)


def test_invalid_options_raise_one_config_error(fake: FakeCloudDns) -> None:
    with pytest.raises(ConfigError) as info:
        make_provider(fake, geo_locations={"EU": "europe-west1", "*": []}, poll_timeout_s=0)
    assert len(info.value.reasons) == 3


# -- apply against the fake ---------------------------------------------------------------------------


async def test_apply_writes_wrr_and_geo_record_sets(fake: FakeCloudDns, provider: CloudDnsProvider) -> None:
    assert await provider.publish(steady_state()) is True
    assert fake.change_posts == 1
    assert geo_items(fake) == {"europe-west1": [f"{EU_POOL}."], "us-central1": [f"{DEFAULT_POOL}."]}
    assert wrr_items(fake, EU_POOL) == {ADDR["eu-central-1"]: 255, ADDR["eu-west-1"]: 255}
    assert wrr_items(fake, DEFAULT_POOL) == dict.fromkeys(ADDR.values(), 255)
    # Each marker claims only the types gtm writes at its name.
    assert rrset(fake, f"_gtm-owner.{FQDN}", "TXT")["rrdatas"] == ['"heritage=gtm,gtm/owner=gtm,gtm/types=CNAME"']
    for name in (EU_POOL, DEFAULT_POOL):
        assert rrset(fake, f"_gtm-owner.{name}", "TXT")["rrdatas"] == ['"heritage=gtm,gtm/owner=gtm,gtm/types=A"']
    assert fake.committed_changes[0]["status"] == "done"  # polled until done
    assert fake.count("GET", "/changes/1") >= 1


async def test_failover_removes_the_region(fake: FakeCloudDns, provider: CloudDnsProvider) -> None:
    state = steady_state()
    await provider.publish(state)
    assert await provider.publish(failover_state(state)) is True
    assert ADDR["us-east-1"] not in wrr_items(fake, DEFAULT_POOL)
    assert set(wrr_items(fake, DEFAULT_POOL)) == {ADDR["eu-central-1"], ADDR["eu-west-1"], ADDR["us-west-2"]}
    change = fake.committed_changes[-1]  # an update is one delete + one add of the same name/type
    assert [(r["name"], r["type"]) for r in change["deletions"]] == [(f"{DEFAULT_POOL}.", "A")]
    assert [(r["name"], r["type"]) for r in change["additions"]] == [(f"{DEFAULT_POOL}.", "A")]


async def test_dark_pinned_segment_applied(fake: FakeCloudDns, provider: CloudDnsProvider) -> None:
    state = steady_state()
    await provider.publish(state)
    policy = make_policy(on_all_unhealthy="fail-open")
    await provider.publish(failover_state(state, down=["eu-central-1", "eu-west-1"], policy=policy))
    assert rrset(fake, EU_POOL, "A") is None
    assert rrset(fake, EU_POOL, "TXT")["rrdatas"] == [DARK_VALUE]
    assert geo_items(fake)["europe-west1"] == [f"{EU_POOL}."]


async def test_steady_state_makes_zero_api_calls(fake: FakeCloudDns, provider: CloudDnsProvider) -> None:
    state = steady_state()
    await provider.publish(state)
    posts = fake.change_posts
    p = await one_plan(provider, state)  # observe → diff: what we wrote parses back equal
    assert p.empty, p.changes
    before = fake.count()
    result = await provider.apply(p, dry_run=False)
    assert result.api_calls == 0
    assert fake.count() == before
    assert await provider.publish(state) is False
    assert fake.change_posts == posts


async def test_dry_run_never_writes(fake: FakeCloudDns, provider: CloudDnsProvider) -> None:
    p = await one_plan(provider, steady_state())
    assert not p.empty
    before = fake.rrsets(MZ)
    result = await provider.apply(p)  # dry run is the default
    assert result.dry_run and result.api_calls == 0
    assert fake.change_posts == 0
    assert fake.rrsets(MZ) == before


async def test_foreign_records_are_left_alone_and_reported(fake: FakeCloudDns, provider: CloudDnsProvider) -> None:
    foreign = {"name": f"{FQDN}.", "type": "A", "ttl": 60, "rrdatas": ["198.51.100.7"]}
    fake.put_rrset(MZ, foreign)
    p = await one_plan(provider, steady_state())
    assert any(c.startswith(f"{FQDN} CNAME") for c in p.conflicts)
    assert all(c.record.name not in (FQDN, f"_gtm-owner.{FQDN}") for c in p.changes)
    await provider.apply(p, dry_run=False)
    assert rrset(fake, FQDN, "A")["rrdatas"] == ["198.51.100.7"]
    assert rrset(fake, FQDN, "CNAME") is None
    assert wrr_items(fake, EU_POOL)  # the pools it owns are still written
    observed = await provider.observe(ZONE)
    assert FQDN in {r.name for r in observed.foreign}


async def test_502_after_commit_is_detected_and_not_resent(fake: FakeCloudDns, provider: CloudDnsProvider) -> None:
    fake.inject(502, commit=True)
    p = await one_plan(provider, steady_state())
    await provider.apply(p, dry_run=False)
    assert fake.change_posts == 1  # re-read showed it applied: no resend, no 409
    assert len(fake.committed_changes) == 1
    assert (await one_plan(provider, steady_state())).empty


async def test_5xx_before_commit_is_resent_after_a_re_read(fake: FakeCloudDns, provider: CloudDnsProvider) -> None:
    fake.inject(503, commit=False)
    p = await one_plan(provider, steady_state())
    await provider.apply(p, dry_run=False)
    assert fake.change_posts == 2
    assert len(fake.committed_changes) == 1
    assert (await one_plan(provider, steady_state())).empty


async def test_5xx_every_time_is_temporary(fake: FakeCloudDns, provider: CloudDnsProvider) -> None:
    fake.inject(500, times=3)
    p = await one_plan(provider, steady_state())
    with pytest.raises(TemporaryProviderError):
        await provider.apply(p, dry_run=False)
    assert fake.change_posts == provider.max_attempts
    assert not fake.committed_changes


async def test_412_on_stale_view_re_observes_once_and_retries(fake: FakeCloudDns, provider: CloudDnsProvider) -> None:
    state = steady_state()
    await provider.publish(state)
    p = await one_plan(provider, failover_state(state))
    # Another writer touches the record set between observe and apply: the deletion no longer
    # matches exactly, so Cloud DNS answers 412.
    changed = rrset(fake, DEFAULT_POOL, "A")
    assert changed is not None
    changed["ttl"] = 99
    fake.put_rrset(MZ, changed)
    rrset_lists = fake.count("GET", "/rrsets")
    await provider.apply(p, dry_run=False)
    assert fake.change_posts == 3  # publish, the 412, the retry
    assert fake.count("GET", "/rrsets") - rrset_lists == 3  # one re-observe (3 pages)
    assert ADDR["us-east-1"] not in wrr_items(fake, DEFAULT_POOL)
    assert rrset(fake, DEFAULT_POOL, "A")["ttl"] == 30


async def test_second_412_at_one_name_is_temporary(fake: FakeCloudDns, provider: CloudDnsProvider) -> None:
    state = steady_state()
    await provider.publish(state)
    posts = fake.change_posts
    fake.inject(412, times=2)
    p = await one_plan(provider, failover_state(state))  # only the default pool's A changes
    with pytest.raises(TemporaryProviderError, match="changed again under us after one re-observe"):
        await provider.apply(p, dry_run=False)
    assert fake.change_posts - posts == 2  # nothing to split: no third send


async def test_second_412_of_the_whole_change_splits_it_per_name(
    fake: FakeCloudDns, provider: CloudDnsProvider
) -> None:
    fake.inject(412, times=2)  # the whole change twice; each name alone goes through
    assert await provider.publish(steady_state()) is True
    assert fake.change_posts == 2 + 3  # two whole changes, then one per name
    assert (await one_plan(provider, steady_state())).empty


@pytest.mark.parametrize("status", [412, 409])
async def test_record_set_refused_twice_fails_alone(
    fake: FakeCloudDns, provider: CloudDnsProvider, status: int
) -> None:
    # Cloud DNS keeps refusing every change that touches the EU pool's A record set: the whole
    # change twice (send, re-observe, re-send), then that record set's own change.
    fake.inject(status, times=3, rrset=(EU_POOL, "A"))
    with pytest.raises(PartialApplyError) as info:
        await provider.publish(steady_state())
    err = info.value
    assert list(err.failed) == [f"{EU_POOL} A"]
    assert err.failed[f"{EU_POOL} A"] == f"{status} injected {status} (nothing committed)"
    assert err.applied == [f"{DEFAULT_POOL} A", f"{FQDN} CNAME"]  # targets before the geo CNAME
    assert err.temporary is True
    assert str(err).startswith(f"gcp (clouddns) at {fake.url}: publish: 1 unit(s) refused, 2 applied: ")
    assert fake.change_posts == 2 + 3
    last = sorted((r["name"], r["type"]) for r in fake.committed_changes[-1]["additions"])
    assert last == [(f"_gtm-owner.{FQDN}.", "TXT"), (f"{FQDN}.", "CNAME")]  # the geo CNAME last, after its pools
    assert rrset(fake, EU_POOL, "A") is None and rrset(fake, f"_gtm-owner.{EU_POOL}", "TXT") is None
    assert wrr_items(fake, DEFAULT_POOL) == dict.fromkeys(ADDR.values(), 255)
    assert geo_items(fake) == {"europe-west1": [f"{EU_POOL}."], "us-central1": [f"{DEFAULT_POOL}."]}

    print(f"clouddns partial apply ({status} x3 on one record set): {fake.count()} HTTP requests, "
          f"{fake.change_posts} change POSTs")
    # The retry plans from what the zone now holds: one change, only the refused record set.
    before, posts = fake.count(), fake.change_posts
    assert await provider.publish(steady_state()) is True
    assert fake.change_posts - posts == 1
    last = fake.committed_changes[-1]
    assert sorted((r["name"], r["type"]) for r in last["additions"]) == [
        (f"_gtm-owner.{EU_POOL}.", "TXT"), (f"{EU_POOL}.", "A")
    ]
    assert not last["deletions"]
    assert wrr_items(fake, EU_POOL) == {ADDR["eu-central-1"]: 255, ADDR["eu-west-1"]: 255}
    print(f"clouddns retry after a partial apply: {fake.count() - before} HTTP requests, 1 change")


async def test_change_pending_beyond_timeout_is_temporary(fake: FakeCloudDns) -> None:
    fake.stuck = True
    p = make_provider(fake, poll_interval_s=0.02, poll_timeout_s=0.2)
    try:
        with pytest.raises(TemporaryProviderError, match="pending"):
            await p.publish(steady_state())
    finally:
        await p.aclose()
    assert fake.change_posts == 1
    assert fake.count("GET", "/changes/1") >= 2


async def test_other_4xx_is_permanent(fake: FakeCloudDns, provider: CloudDnsProvider) -> None:
    fake.inject(400)
    p = await one_plan(provider, steady_state())
    with pytest.raises(PermanentProviderError):
        await provider.apply(p, dry_run=False)
    assert fake.change_posts == 1


async def test_unknown_policy_on_an_owned_name_is_replaced(fake: FakeCloudDns, provider: CloudDnsProvider) -> None:
    state = steady_state()
    await provider.publish(state)
    hand_edited = rrset(fake, EU_POOL, "A")
    assert hand_edited is not None
    item = hand_edited["routingPolicy"]["wrr"]["items"][0]  # someone added a health check by hand
    item["healthCheckedTargets"] = {"externalEndpoints": [item["rrdatas"][0]]}
    fake.put_rrset(MZ, hand_edited)
    p = await one_plan(provider, state)  # parsed as an opaque "policy" set: never equal to a rendering
    assert sorted((c.action, c.record.name, c.record.set_identifier) for c in p.changes) == [
        ("create", EU_POOL, "wrr"),
        ("delete", EU_POOL, "policy"),
    ]
    posts = fake.change_posts
    await provider.apply(p, dry_run=False)
    assert fake.change_posts == posts + 1  # the exact listed JSON was deleted: no 412
    assert wrr_items(fake, EU_POOL) == {ADDR["eu-central-1"]: 255, ADDR["eu-west-1"]: 255}
    assert "healthCheckedTargets" not in str(rrset(fake, EU_POOL, "A"))


# -- configuration ---------------------------------------------------------------------------------------


async def test_registry_builds_it_with_a_named_managed_zone(fake: FakeCloudDns) -> None:
    cfg = ProviderConfig(
        name="gcp",
        kind="clouddns",
        options={
            "project": PROJECT,
            "managed_zones": {ZONE: MZ},
            "api_endpoint": fake.url,
            "anonymous": True,
            "geo_locations": GEO,
            "poll_interval_s": 0.01,
        },
    )
    p = build_provider(cfg, make_policy())
    assert isinstance(p, CloudDnsProvider)
    try:
        await p.publish(steady_state())
    finally:
        await p.aclose()
    assert fake.count("GET", f"/managedZones/{MZ}") == 1  # checked once, then cached
    assert fake.count("GET", "/managedZones") == 0  # no lookup by dnsName


async def test_managed_zone_for_another_dns_name_is_refused(fake: FakeCloudDns) -> None:
    fake.add_zone("other", "other.example.org")
    p = make_provider(fake, managed_zones={ZONE: "other"})
    try:
        with pytest.raises(PermanentProviderError, match="serves"):
            await p.observe(ZONE)
    finally:
        await p.aclose()


async def test_unknown_option_is_a_config_error(fake: FakeCloudDns) -> None:
    cfg = ProviderConfig(name="gcp", kind="clouddns", options={"project": PROJECT, "region": "x"})
    with pytest.raises(ConfigError, match="region"):
        build_provider(cfg, make_policy())
