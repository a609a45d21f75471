"""RFC2136 zone isolation against a real BIND 9: a zone that refuses this key's updates, a zone
where another writer wins the race (a failed prerequisite), or a zone the server does not serve
at all never holds back the other zones' updates.

Each test reads both zones' names back from BIND and counts the UPDATE messages BIND received
(its own statistics channel), so "applied" and "re-sent only what failed" are the server's word.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path

import dns.asyncquery
import dns.rcode
import dns.tsig
import dns.update
import pytest

from gtm.engine.planner import plan as engine_plan
from gtm.errors import PartialApplyError, PermanentProviderError, UnsafePlanError
from gtm.models.plan import DesiredState
from gtm.models.policy import Policy, Zone
from gtm.providers.dnsclient import query
from gtm.providers.records import Observed
from gtm.providers.rfc2136 import Rfc2136Provider
from gtm.testing.bind import BindServer
from tests.factories import (
    FOUR_REGIONS,
    T0,
    healthy_reports,
    make_inventory,
    make_policy,
    make_report,
    make_service,
)
from tests.providers.test_rfc2136 import ADDR, ALL, answer, named_installed  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("named_installed")  # installs BIND when missing (never skips)

ALPHA = "alpha.example.com"  # sorts first: before the fix its refusal stopped the zones behind it
BETA = "beta.example.com"


def two_zone_state(
    *, alpha_label: str = "chat", beta_ttl: int = 30, down: str | None = None, digest: str = ""
) -> DesiredState:
    """One catch-all service in each zone (``<alpha_label>.ALPHA``, ``chat.BETA``), every region
    healthy but ``down``; ``digest`` is the policy digest the state carries."""
    base = make_policy([make_service("chat")])
    services = tuple(
        make_service("chat", ttl=ttl).model_copy(
            update={"name": f"chat-{z.split('.')[0]}", "fqdn": f"{label}.{z}", "zone": z}
        )
        for z, label, ttl in ((ALPHA, alpha_label, 30), (BETA, "chat", beta_ttl))
    )
    policy = Policy.model_validate(
        {**base.model_dump(), "zones": [Zone(name=z, nameservers=(f"ns1.{z}",)).model_dump() for z in (ALPHA, BETA)],
         "services": [s.model_dump() for s in services]}
    )
    reports = healthy_reports(T0, list(FOUR_REGIONS))
    if down is not None:
        reports[down] = make_report(down, T0, healthy=False, fail=5)
    return engine_plan(policy, make_inventory(), reports, {}, None, T0, digest=digest)


@pytest.fixture
def refusing_bind(tmp_path: Path) -> Iterator[BindServer]:
    """BIND serving both zones; ALPHA grants updates only to another key (REFUSED for ours)."""
    server = BindServer.start([ALPHA, BETA], directory=tmp_path / "bind", refuse_updates=[ALPHA], statistics=True)
    try:
        yield server
    finally:
        server.stop()


def updates(bind: BindServer) -> int:
    return bind.opcode_counts()["UPDATE"]


async def test_refused_zone_leaves_the_other_zone_applied(refusing_bind: BindServer) -> None:
    bind = refusing_bind
    provider = Rfc2136Provider("bind", owner_id="gtm", zones=[ALPHA, BETA], **bind.provider_options())
    state = two_zone_state()
    with pytest.raises(PartialApplyError) as info:
        await provider.publish(state)
    err = info.value
    assert err.applied == [f"zone {BETA}"]
    assert list(err.failed) == [f"zone {ALPHA}"]
    assert "REFUSED" in err.failed[f"zone {ALPHA}"]
    assert err.temporary is False
    assert str(err).startswith(f"bind (rfc2136) at {bind.host}:{bind.port}: publish: 1 unit(s) refused, 1 applied: ")
    assert f"zone {ALPHA}: UPDATE zone {ALPHA} (" in str(err)
    assert "REFUSED: the zone's update-policy/allow-transfer does not grant key gtm-key (hmac-sha256)" in str(err)
    assert updates(bind) == 2  # one UPDATE per zone
    assert await answer(bind, f"chat.{BETA}") == ("NOERROR", ALL)
    assert await answer(bind, f"chat.{ALPHA}") == ("NXDOMAIN", set())

    # The retry plans again from what BIND holds: BETA is in sync, only ALPHA is re-sent.
    with pytest.raises(PartialApplyError) as again:
        await provider.publish(state)
    assert again.value.applied == [f"zone {BETA}"] and list(again.value.failed) == [f"zone {ALPHA}"]
    assert updates(bind) == 3
    assert await answer(bind, f"chat.{BETA}") == ("NOERROR", ALL)


async def test_a_zone_refused_for_good_never_gates_a_failover_in_the_others(refusing_bind: BindServer) -> None:
    bind = refusing_bind
    provider = Rfc2136Provider(
        "bind", owner_id="gtm", zones=[ALPHA, BETA], max_change_fraction=0.4, **bind.provider_options()
    )
    with pytest.raises(PartialApplyError):
        await provider.publish(two_zone_state(digest="policy-1"))
    # A failover under the same policy rewrites 1 of BETA's 2 owned record sets (> 40%): it is a
    # failover, applied at once, although ALPHA never took this policy.
    with pytest.raises(PartialApplyError) as info:
        await provider.publish(two_zone_state(down="us-east-1", digest="policy-1"))
    assert info.value.applied == [f"zone {BETA}"]
    assert await answer(bind, f"chat.{BETA}") == ("NOERROR", ALL - {ADDR["us-east-1"]})


async def test_zone_not_served_is_isolated_at_observe(refusing_bind: BindServer) -> None:
    bind = refusing_bind
    missing = "gamma.example.org"  # configured in the provider, not served by BIND: NOTAUTH
    state = two_zone_state()
    zones = [BETA, missing]
    provider = Rfc2136Provider("bind", owner_id="gtm", zones=zones, **bind.provider_options())
    moved = dataclasses.replace(state, services={
        name: (dataclasses.replace(svc, zone=missing, fqdn=f"chat.{missing}") if svc.zone == ALPHA else svc)
        for name, svc in state.services.items()
    })
    with pytest.raises(PartialApplyError) as info:
        await provider.publish(moved)
    assert info.value.applied == [f"zone {BETA}"]
    assert info.value.failed[f"zone {missing}"].startswith(f"AXFR {missing}: NOTAUTH")
    assert info.value.temporary is False
    assert updates(bind) == 1
    assert await answer(bind, f"chat.{BETA}") == ("NOERROR", ALL)


async def test_one_zone_failing_alone_raises_its_own_error(refusing_bind: BindServer) -> None:
    bind = refusing_bind
    provider = Rfc2136Provider("bind", owner_id="gtm", zones=[ALPHA], **bind.provider_options())
    with pytest.raises(PermanentProviderError, match="REFUSED") as info:
        await provider.publish(two_zone_state())
    assert not isinstance(info.value, PartialApplyError)
    assert updates(bind) == 1


async def test_an_unsafe_zone_stops_the_publish_before_any_write(tmp_path: Path) -> None:
    bind = BindServer.start([ALPHA, BETA], directory=tmp_path / "bind", statistics=True)
    try:
        provider = Rfc2136Provider(
            "bind", owner_id="gtm", zones=[ALPHA, BETA], max_change_fraction=0.4, **bind.provider_options()
        )
        assert await provider.publish(two_zone_state()) is True
        # A new policy renames ALPHA's service (deletes 1 of its 2 owned record sets: > 40%) and
        # changes BETA's TTL (routine): the gate holds both, nothing is sent.
        unsafe = f"at {bind.host}:{bind.port}: apply {ALPHA}: plan for {ALPHA} deletes/rewrites 1 of 2"
        with pytest.raises(UnsafePlanError, match=unsafe):
            await provider.publish(two_zone_state(alpha_label="chat2", beta_ttl=60))
        assert updates(bind) == 2
        response = await query(bind.host, bind.port, f"chat.{BETA}", "A")
        assert [rrset.ttl for rrset in response.answer] == [30]
    finally:
        bind.stop()


class _RacedProvider(Rfc2136Provider):
    """The real provider; right after it reads ALPHA, another writer creates ALPHA's name (the
    race the prerequisites exist for), at a deterministic moment."""

    bind: BindServer

    async def observe(self, zone: str, managed_names: Iterable[str] = ()) -> Observed:
        observed = await super().observe(zone, managed_names)
        if zone == ALPHA:
            key = dns.tsig.Key(self.bind.key_name, self.bind.secret, self.bind.algorithm)
            upd = dns.update.UpdateMessage(ALPHA, keyring=key)
            upd.add(f"chat.{ALPHA}.", 30, "A", "198.51.100.9")
            response = await dns.asyncquery.tcp(upd, self.bind.host, port=self.bind.port, timeout=2)
            assert response.rcode() == dns.rcode.NOERROR
        return observed


async def test_prerequisite_failure_in_one_zone_is_temporary_and_isolated(tmp_path: Path) -> None:
    bind = BindServer.start([ALPHA, BETA], directory=tmp_path / "bind", statistics=True)
    try:
        provider = _RacedProvider("bind", owner_id="gtm", zones=[ALPHA, BETA], **bind.provider_options())
        provider.bind = bind
        with pytest.raises(PartialApplyError) as info:
            await provider.publish(two_zone_state())
        err = info.value
        assert err.applied == [f"zone {BETA}"] and list(err.failed) == [f"zone {ALPHA}"]
        assert "prerequisite failed: an RRset expected absent now exists (YXRRSET)" in err.failed[f"zone {ALPHA}"]
        assert err.temporary is True
        assert updates(bind) == 3  # the other writer's, ALPHA's (refused), BETA's
        assert await answer(bind, f"chat.{BETA}") == ("NOERROR", ALL)
        assert await answer(bind, f"chat.{ALPHA}") == ("NOERROR", {"198.51.100.9"})  # the other writer's, alone
    finally:
        bind.stop()
