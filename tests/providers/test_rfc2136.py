"""RFC2136 provider against a real BIND 9 (started per test on 127.0.0.1 by ``BindServer``).

What is checked over real sockets: rendering of pools and segments (answers over UDP and TCP),
failover, a dark segment answering NODATA, SOA serial increments, idempotence (zero messages),
dry runs, foreign records left alone, prerequisites catching a concurrent writer with nothing
half-applied, TCP for large updates, TSIG failures (wrong secret, unknown key, skewed clock),
config validation, and the update round-trip time.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import dns.asyncquery
import dns.message
import dns.name
import dns.rcode
import dns.tsig
import dns.update
import dns.xfr
import dns.zone
import pytest

from gtm.engine.planner import plan as engine_plan
from gtm.errors import ConfigError, PermanentProviderError, TemporaryProviderError
from gtm.models.plan import DesiredState
from gtm.models.policy import Policy, ProviderConfig
from gtm.models.region import Endpoint, Geography, Inventory, Region
from gtm.providers.dnsclient import query
from gtm.providers.records import Change, Plan, RecordSet
from gtm.providers.registry import build_provider
from gtm.providers.rfc2136 import Rfc2136Provider, dark_marker
from gtm.testing.bind import BindServer, find_named
from tests.factories import (
    FOUR_REGIONS,
    T0,
    ZONE,
    eu_segment,
    healthy_reports,
    make_inventory,
    make_policy,
    make_report,
    make_service,
)

REPO = Path(__file__).resolve().parents[2]
CHAT = f"chat.{ZONE}"
EU_CHAT = f"eu.{CHAT}"
ADDR = {"eu-central-1": "192.0.2.10", "eu-west-1": "192.0.2.11", "us-east-1": "192.0.2.12", "us-west-2": "192.0.2.13"}
ALL = set(ADDR.values())
EU = {ADDR["eu-central-1"], ADDR["eu-west-1"]}
US = {ADDR["us-east-1"], ADDR["us-west-2"]}


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def named_installed() -> None:
    """Install BIND through scripts/ensure-bind.sh when ``named`` is missing (never skip)."""
    if find_named() is None:
        subprocess.run(["bash", str(REPO / "scripts" / "ensure-bind.sh")], check=True)
    assert find_named() is not None, "named is still missing after scripts/ensure-bind.sh"


@pytest.fixture
def bind(named_installed: None, tmp_path: Path) -> Iterator[BindServer]:
    server = BindServer.start([ZONE], directory=tmp_path / "bind")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def provider(bind: BindServer) -> Rfc2136Provider:
    return Rfc2136Provider("bind", owner_id="gtm", zones=[ZONE], **bind.provider_options())


def state(
    *,
    down: tuple[str, ...] = (),
    policy: Policy | None = None,
    inventory: Inventory | None = None,
    previous: DesiredState | None = None,
    now: float = T0,
) -> DesiredState:
    """A plan from the engine: every region healthy except ``down`` (failing checks)."""
    inventory = inventory or make_inventory()
    reports = healthy_reports(now, list(inventory.regions))
    for region in down:
        reports[region] = make_report(region, now, healthy=False, fail=5)
    return engine_plan(policy or make_policy(), inventory, reports, {}, previous, now)


async def publish(provider: Rfc2136Provider, desired: DesiredState) -> int:
    """Plan and apply for real; the number of UPDATE messages sent."""
    calls = 0
    for p in await provider.plan_state(desired):
        calls += (await provider.apply(p, dry_run=False)).api_calls
    return calls


async def answer(bind: BindServer, name: str, rdtype: str = "A", *, tcp: bool = False) -> tuple[str, set[str]]:
    """(rcode text, values of the answer RRset for ``name``/``rdtype``)."""
    response = await query(bind.host, bind.port, name, rdtype, tcp=tcp)
    values = {
        rd.to_text()
        for rrset in response.answer
        if rrset.name == dns.name.from_text(name)
        for rd in rrset
    }
    return dns.rcode.to_text(response.rcode()), values


async def serial(bind: BindServer) -> int:
    _, values = await answer(bind, ZONE, "SOA")
    return int(next(iter(values)).split()[2])


async def zone_text(bind: BindServer) -> str:
    """The whole zone by AXFR (TSIG-signed), as text: compares before/after exactly."""
    holder = dns.zone.Zone(dns.name.from_text(ZONE), relativize=False)
    q, _ = dns.xfr.make_query(holder, serial=None)
    q.use_tsig(dns.tsig.Key(bind.key_name, bind.secret, bind.algorithm))
    await dns.asyncquery.inbound_xfr(bind.host, holder, query=q, port=bind.port, timeout=2)
    return holder.to_text(sorted=True)


async def external_update(bind: BindServer, build: Callable[[dns.update.UpdateMessage], None]) -> str:
    """Another writer (not gtm) changes the zone with the same key; returns the rcode text."""
    upd = dns.update.UpdateMessage(ZONE, keyring=dns.tsig.Key(bind.key_name, bind.secret, bind.algorithm))
    build(upd)
    response = await dns.asyncquery.tcp(upd, bind.host, port=bind.port, timeout=2)
    return dns.rcode.to_text(response.rcode())


def key_file(tmp_path: Path, secret: str, name: str = "wrong.secret") -> str:
    p = tmp_path / name
    p.write_text(secret + "\n")
    return str(p)


# -- render (pure) --------------------------------------------------------------------------------


def test_render_pools_as_rrsets_per_segment_name(tmp_path: Path) -> None:
    p = Rfc2136Provider(
        "bind", owner_id="gtm", zones=[ZONE], server="127.0.0.1", tsig_key_name="k", tsig_algorithm="hmac-sha256",
        tsig_secret_file=key_file(tmp_path, "c2VjcmV0"),
    )
    rendered = {(r.name, r.rdtype): r for r in p.render(state(), ZONE)}
    assert set(rendered) == {(CHAT, "A"), (EU_CHAT, "A")}
    assert set(rendered[(CHAT, "A")].values) == ALL  # default segment at the service name
    assert set(rendered[(EU_CHAT, "A")].values) == EU  # others at <segment>.<service>
    assert rendered[(CHAT, "A")].ttl == 30
    assert p.render(state(), "other.example.com") == []

    # Unequal weights cannot be expressed: every active region is one equal member.
    static = make_policy([make_service(routing="static", static_weights={"eu-west-1": 10, "us-east-1": 250,
                                                                         "eu-central-1": 0, "us-west-2": 0})])
    [rs] = p.render(state(policy=static), ZONE)
    assert (rs.name, set(rs.values)) == (CHAT, {ADDR["eu-west-1"], ADDR["us-east-1"]})

    # A dark segment keeps its name with a TXT only: no address, never another segment's regions.
    dark = {(r.name, r.rdtype): r for r in p.render(state(down=("eu-central-1", "eu-west-1")), ZONE)}
    assert set(dark) == {(CHAT, "A"), (EU_CHAT, "TXT")}
    assert dark[(EU_CHAT, "TXT")].values == (dark_marker("eu"),)
    assert set(dark[(CHAT, "A")].values) == US


def test_render_cname_regions(tmp_path: Path) -> None:
    def provider(strict: bool) -> Rfc2136Provider:
        return Rfc2136Provider(
            "bind", owner_id="gtm", zones=[ZONE], strict=strict, server="127.0.0.1", tsig_key_name="k",
            tsig_algorithm="hmac-sha256", tsig_secret_file=key_file(tmp_path, "c2VjcmV0"),
        )

    def region(name: str, endpoint: Endpoint) -> Region:
        return Region(name=name, jurisdiction="US", geography=Geography(continent="NA"), endpoints=(endpoint,))

    lb = Inventory(regions={"us-east-1": region("us-east-1", Endpoint(hostname="LB-East.Example.NET"))})
    policy = make_policy([make_service(regions=["us-east-1"])])
    [rs] = provider(True).render(state(policy=policy, inventory=lb), ZONE)
    assert (rs.rdtype, rs.values) == ("CNAME", ("lb-east.example.net.",))

    mixed = Inventory(regions={
        "us-east-1": region("us-east-1", Endpoint(hostname="lb.example.net")),
        "us-west-2": region("us-west-2", Endpoint(address="2001:DB8::1")),
    })
    policy = make_policy([make_service(regions=["us-east-1", "us-west-2"])])
    with pytest.raises(PermanentProviderError, match="mixes CNAME"):
        provider(True).render(state(policy=policy, inventory=mixed), ZONE)
    [rs] = provider(False).render(state(policy=policy, inventory=mixed), ZONE)
    assert (rs.rdtype, rs.values) == ("AAAA", ("2001:db8::1",))  # canonical text, as BIND answers


# -- apply against BIND ---------------------------------------------------------------------------


async def test_apply_then_query_udp_and_tcp_serial_and_idempotence(
    bind: BindServer, provider: Rfc2136Provider
) -> None:
    serial0 = await serial(bind)
    assert await publish(provider, state()) == 1  # one atomic UPDATE for the whole zone
    for tcp in (False, True):
        assert await answer(bind, CHAT, tcp=tcp) == ("NOERROR", ALL)
        assert await answer(bind, EU_CHAT, tcp=tcp) == ("NOERROR", EU)
    serial1 = await serial(bind)
    assert serial1 > serial0  # BIND bumps the serial (secondaries get NOTIFY)
    assert provider.last_transport == "udp"

    before = await zone_text(bind)
    assert await publish(provider, state()) == 0  # same state: zero messages
    assert await zone_text(bind) == before
    assert await serial(bind) == serial1

    # Failover: an unhealthy region leaves the RRsets of every segment it was in.
    assert await publish(provider, state(down=("eu-west-1",))) == 1
    for tcp in (False, True):
        assert await answer(bind, CHAT, tcp=tcp) == ("NOERROR", ALL - {ADDR["eu-west-1"]})
        assert await answer(bind, EU_CHAT, tcp=tcp) == ("NOERROR", {ADDR["eu-central-1"]})
    assert await serial(bind) > serial1


async def test_dark_eu_segment_answers_nodata(bind: BindServer, provider: Rfc2136Provider) -> None:
    await publish(provider, state())
    await publish(provider, state(down=("eu-central-1", "eu-west-1")))
    for tcp in (False, True):
        for rdtype in ("A", "AAAA"):
            rcode, values = await answer(bind, EU_CHAT, rdtype, tcp=tcp)
            assert (rcode, values) == ("NOERROR", set())  # NODATA: the name exists, no address
        assert await answer(bind, CHAT, tcp=tcp) == ("NOERROR", US)  # default pool unaffected
    assert await answer(bind, EU_CHAT, "TXT") == ("NOERROR", {dark_marker("eu")})

    await publish(provider, state())  # recovery: the TXT goes, the addresses come back
    assert await answer(bind, EU_CHAT) == ("NOERROR", EU)
    assert await answer(bind, EU_CHAT, "TXT") == ("NOERROR", set())


async def test_dry_run_never_writes(bind: BindServer, provider: Rfc2136Provider) -> None:
    before = await zone_text(bind)
    [p] = await provider.plan_state(state())
    assert len(p.changes) == 4
    result = await provider.apply(p)  # dry run is the default
    assert (result.api_calls, result.dry_run) == (0, True)
    assert await zone_text(bind) == before
    assert await answer(bind, CHAT) == ("NXDOMAIN", set())


async def test_foreign_records_reported_and_left_alone(bind: BindServer, provider: Rfc2136Provider) -> None:
    assert await external_update(bind, lambda u: u.add(EU_CHAT + ".", 60, "A", "198.51.100.7")) == "NOERROR"
    [p] = await provider.plan_state(state())
    assert any(EU_CHAT in c and "another owner" in c for c in p.conflicts)
    assert {c.record.name for c in p.changes} == {CHAT, f"_gtm-owner.{CHAT}"}
    observed = await provider.observe(ZONE, managed_names=[CHAT, EU_CHAT])
    assert [(r.name, r.values) for r in observed.foreign] == [(EU_CHAT, ("198.51.100.7",))]

    await provider.apply(p, dry_run=False)
    assert await answer(bind, EU_CHAT) == ("NOERROR", {"198.51.100.7"})
    assert await answer(bind, CHAT) == ("NOERROR", ALL)
    # Converged: the foreign name stays a reported conflict, no write.
    assert await publish(provider, state()) == 0


async def test_concurrent_change_fails_prerequisite_nothing_half_applied(
    bind: BindServer, provider: Rfc2136Provider
) -> None:
    await publish(provider, state())
    [p] = await provider.plan_state(state(down=("eu-west-1",)))
    assert {c.record.name for c in p.changes} == {CHAT, EU_CHAT}

    # Someone else changes chat's RRset between our observe and our apply.
    assert await external_update(bind, lambda u: u.replace(CHAT + ".", 30, "A", "198.51.100.9")) == "NOERROR"
    before = await zone_text(bind)
    with pytest.raises(TemporaryProviderError, match=r"prerequisite failed.*NXRRSET.*re-observe and retry"):
        await provider.apply(p, dry_run=False)
    assert await zone_text(bind) == before  # eu.chat's change was not applied either
    assert await answer(bind, EU_CHAT) == ("NOERROR", EU)

    # Re-observe and retry converges (the owned name is gtm's; the stray value is replaced).
    assert await publish(provider, state(down=("eu-west-1",))) == 1
    assert await answer(bind, CHAT) == ("NOERROR", ALL - {ADDR["eu-west-1"]})


async def test_concurrent_create_fails_prerequisite(bind: BindServer, provider: Rfc2136Provider) -> None:
    [p] = await provider.plan_state(state())
    assert await external_update(bind, lambda u: u.add(CHAT + ".", 30, "A", "198.51.100.9")) == "NOERROR"
    with pytest.raises(TemporaryProviderError, match=r"YXRRSET.*re-observe"):
        await provider.apply(p, dry_run=False)
    assert await answer(bind, EU_CHAT) == ("NXDOMAIN", set())


async def test_large_update_goes_over_tcp(bind: BindServer, provider: Rfc2136Provider) -> None:
    services = [make_service(f"svc{i:02d}", segments=[eu_segment()]) for i in range(30)]
    big = state(policy=make_policy(services))
    [p] = await provider.plan_state(big)
    assert len(p.changes) == 120
    assert len(provider._update_message(ZONE, p).to_wire()) > provider.tcp_threshold
    assert (await provider.apply(p, dry_run=False)).api_calls == 1
    assert provider.last_transport == "tcp"
    assert await answer(bind, f"svc29.{ZONE}", tcp=True) == ("NOERROR", ALL)
    assert await answer(bind, f"eu.svc00.{ZONE}") == ("NOERROR", EU)


async def test_verify_catches_an_update_the_server_ignored(bind: BindServer, provider: Rfc2136Provider) -> None:
    # BIND acknowledges, but silently ignores, a CNAME added next to other data: verify sees it.
    name = f"www.{ZONE}"
    assert await external_update(bind, lambda u: u.add(name + ".", 60, "TXT", '"x"')) == "NOERROR"
    cname = RecordSet(name=name, rdtype="CNAME", ttl=30, values=("lb.example.net.",))
    p = Plan(provider="bind", zone=ZONE, changes=(Change("create", new=cname),), owned_before=0)
    with pytest.raises(TemporaryProviderError, match=r"does not answer it: www\.gtm\.example\.com CNAME: answers"):
        await provider.apply(p, dry_run=False)


# -- TSIG and server errors ------------------------------------------------------------------------


async def test_wrong_secret_is_badsig(bind: BindServer, tmp_path: Path) -> None:
    other_secret = "b3RoZXIgc2VjcmV0IG9mIDMyIGJ5dGVzIGxvbmcgISE="
    assert other_secret != bind.secret
    wrong = Rfc2136Provider(
        "bind", owner_id="gtm", zones=[ZONE], **bind.provider_options(tsig_secret_file=key_file(tmp_path, other_secret))
    )
    [p] = await Rfc2136Provider("ok", owner_id="gtm", zones=[ZONE], **bind.provider_options()).plan_state(state())
    with pytest.raises(PermanentProviderError, match=r"BADSIG.*secret differs") as info:
        await wrong.apply(p, dry_run=False)
    assert isinstance(info.value.__cause__, dns.tsig.PeerBadSignature)
    with pytest.raises(PermanentProviderError, match="BADSIG"):
        await wrong.observe(ZONE)
    assert await answer(bind, CHAT) == ("NXDOMAIN", set())


async def test_unknown_key_is_badkey(bind: BindServer) -> None:
    unknown = Rfc2136Provider(
        "bind", owner_id="gtm", zones=[ZONE], **bind.provider_options(tsig_key_name="not-the-key")
    )
    with pytest.raises(PermanentProviderError, match=r"BADKEY.*not-the-key") as info:
        await unknown.observe(ZONE)
    assert isinstance(info.value.__cause__, dns.tsig.PeerBadKey)
    [p] = await Rfc2136Provider("ok", owner_id="gtm", zones=[ZONE], **bind.provider_options()).plan_state(state())
    with pytest.raises(PermanentProviderError, match="BADKEY"):
        await unknown.apply(p, dry_run=False)


async def test_skewed_clock_is_badtime(
    bind: BindServer, provider: Rfc2136Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    [p] = await provider.plan_state(state())
    # Sign with a clock one hour behind: dnspython stamps the TSIG time from dns.message's clock
    # when the message is rendered (BIND's fudge is 300 s).
    monkeypatch.setattr(dns.message, "time", SimpleNamespace(time=lambda: time.time() - 3600))
    with pytest.raises(PermanentProviderError, match=r"BADTIME.*clock") as info:
        await provider.apply(p, dry_run=False)
    assert isinstance(info.value.__cause__, dns.tsig.PeerBadTime)
    monkeypatch.undo()
    assert await answer(bind, CHAT) == ("NXDOMAIN", set())


async def test_zone_not_served_is_permanent_and_server_down_is_temporary(bind: BindServer) -> None:
    other = "other.example.org"
    p = Rfc2136Provider("bind", owner_id="gtm", zones=[other], **bind.provider_options())
    rs = RecordSet(name=f"x.{other}", rdtype="A", ttl=30, values=("192.0.2.1",))
    plan = Plan(provider="bind", zone=other, changes=(Change("create", new=rs),), owned_before=0)
    with pytest.raises(PermanentProviderError, match=r"NOTAUTH: the server is not authoritative for other\.example"):
        await p.apply(plan, dry_run=False)
    with pytest.raises(PermanentProviderError, match="NOTAUTH"):
        await p.observe(other)

    bind.stop()
    with pytest.raises(TemporaryProviderError, match="ConnectionRefused"):
        await p.observe(ZONE)


def test_rcodes_map_to_clear_errors(tmp_path: Path) -> None:
    p = Rfc2136Provider(
        "bind", owner_id="gtm", zones=[ZONE], server="127.0.0.1", tsig_key_name="k", tsig_algorithm="hmac-sha256",
        tsig_secret_file=key_file(tmp_path, "c2VjcmV0"),
    )
    assert p._rcode_error(dns.rcode.NOERROR, "UPDATE", ZONE) is None
    expected = {
        dns.rcode.NXRRSET: (TemporaryProviderError, "prerequisite failed"),
        dns.rcode.YXRRSET: (TemporaryProviderError, "prerequisite failed"),
        dns.rcode.NXDOMAIN: (TemporaryProviderError, "re-observe and retry"),
        dns.rcode.YXDOMAIN: (TemporaryProviderError, "re-observe and retry"),
        dns.rcode.SERVFAIL: (TemporaryProviderError, "SERVFAIL"),
        dns.rcode.REFUSED: (PermanentProviderError, "REFUSED: .*update-policy.* does not grant key k"),
        dns.rcode.NOTAUTH: (PermanentProviderError, "NOTAUTH"),
        dns.rcode.NOTZONE: (PermanentProviderError, "NOTZONE: a name is outside zone"),
        dns.rcode.FORMERR: (PermanentProviderError, "FORMERR"),
        dns.rcode.NOTIMP: (PermanentProviderError, "NOTIMP"),
    }
    for rcode, (cls, pattern) in expected.items():
        error = p._rcode_error(rcode, "UPDATE", ZONE)
        assert type(error) is cls, rcode
        assert re.search(pattern, str(error)), (rcode, str(error))


# -- configuration ------------------------------------------------------------------------------------


def test_config_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    secret = "c2VjcmV0LXZhbHVlLW5vdC10by1iZS1sb2dnZWQ="
    good = {"server": "127.0.0.1", "tsig_key_name": "k", "tsig_secret_file": key_file(tmp_path, secret)}

    def make(**options: object) -> Rfc2136Provider:
        return Rfc2136Provider("bind", owner_id="gtm", zones=[ZONE], **options)  # type: ignore[arg-type]

    with pytest.raises(ConfigError, match="'tsig_algorithm' is required"):
        make(**good)
    with pytest.raises(ConfigError, match="'tsig_algorithm' 'sha256' unknown"):
        make(**good, tsig_algorithm="sha256")
    with pytest.raises(ConfigError) as info:  # every reason at once
        make(tsig_algorithm="hmac-sha256")
    assert len(info.value.reasons) == 3  # server, key name, secret
    with pytest.raises(ConfigError, match="not both"):
        make(**good, tsig_algorithm="hmac-sha256", tsig_secret_env="X")
    monkeypatch.delenv("GTM_TEST_UNSET_SECRET", raising=False)
    with pytest.raises(ConfigError, match=r"GTM_TEST_UNSET_SECRET \(tsig_secret_env\) is unset"):
        make(server="127.0.0.1", tsig_key_name="k", tsig_algorithm="hmac-sha256",
             tsig_secret_env="GTM_TEST_UNSET_SECRET")
    with pytest.raises(ConfigError, match="not valid base64") as info:
        make(server="127.0.0.1", tsig_key_name="k", tsig_algorithm="hmac-sha256",
             tsig_secret_file=key_file(tmp_path, "not base64 !!", "bad"))
    assert "not base64" not in str(info.value)

    caplog.set_level("DEBUG", logger="gtm")
    monkeypatch.setenv("GTM_TEST_TSIG", secret)
    env = make(server="127.0.0.1", tsig_key_name="k", tsig_algorithm="hmac-sha256", tsig_secret_env="GTM_TEST_TSIG")
    keygen = tmp_path / "k.key"
    keygen.write_text(f'key "k" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret}";\n}};\n')
    from_keyfile = make(server="127.0.0.1", tsig_key_name="k", tsig_algorithm="hmac-sha256",
                        tsig_secret_file=str(keygen))
    assert env._key == from_keyfile._key
    with pytest.raises(ConfigError, match="declares algorithm hmac-sha256, but tsig_algorithm is hmac-sha512"):
        make(server="127.0.0.1", tsig_key_name="k", tsig_algorithm="hmac-sha512", tsig_secret_file=str(keygen))
    assert "secret set from environment variable GTM_TEST_TSIG" in caplog.text
    assert secret not in caplog.text and secret not in repr(env._key) and secret not in repr(vars(env))

    # Through the registry, as a policy builds it: a missing algorithm or an inline secret is a ConfigError.
    policy = make_policy()
    cfg = ProviderConfig(name="bind", kind="rfc2136", options=good)
    with pytest.raises(ConfigError, match="tsig_algorithm"):
        build_provider(cfg, policy)
    inline = ProviderConfig(name="bind", kind="rfc2136", options={**good, "tsig_algorithm": "hmac-sha256",
                                                                   "tsig_secret": secret})
    with pytest.raises(ConfigError, match="tsig_secret"):
        build_provider(inline, policy)
    ok = ProviderConfig(name="bind", kind="rfc2136", options={**good, "tsig_algorithm": "hmac-sha256"})
    built = build_provider(ok, policy)
    assert isinstance(built, Rfc2136Provider) and built.zones == (ZONE,)


# -- round trip ------------------------------------------------------------------------------------------


async def test_update_round_trip_median(bind: BindServer, capsys: pytest.CaptureFixture[str]) -> None:
    fast = Rfc2136Provider("bind", owner_id="gtm", zones=[ZONE], **bind.provider_options(verify=False))
    checked = Rfc2136Provider("bind", owner_id="gtm", zones=[ZONE], **bind.provider_options())
    await publish(fast, state())
    states = [state(down=("us-east-1",)), state()]
    times: dict[str, list[float]] = {"update": [], "update+verify": []}
    for i in range(120):
        p = fast if i % 2 == 0 else checked
        [plan] = await p.plan_state(states[i % 2])
        assert len(plan.changes) == 1
        t0 = time.perf_counter()
        assert (await p.apply(plan, dry_run=False)).api_calls == 1
        times["update" if p is fast else "update+verify"].append((time.perf_counter() - t0) * 1000)
    medians = {k: statistics.median(v) for k, v in times.items()}
    with capsys.disabled():
        print(
            f"\nRFC2136 round trip to BIND over {len(times['update'])} updates each: median "
            + ", ".join(f"{k} {m:.2f} ms" for k, m in medians.items())
        )
    assert all(len(v) >= 50 for v in times.values())
    assert medians["update"] < 50
    assert await answer(bind, CHAT) == ("NOERROR", ALL)


# Keep the factories' example fleet and the addresses above in step.
assert set(FOUR_REGIONS) == set(ADDR)
