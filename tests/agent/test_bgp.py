"""The agent's BGP speaker: checked ExaBGP commands, the generated config, the decision per
prefix (plan, own fleet with fall/rise, graceful drain), BIRD's table parser, and the stored
BgpState on a real Redis. The real ExaBGP ↔ BIRD path is in tests/e2e/test_anycast_e2e.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from gtm.agent.bgp import BgpSettings, BgpSpeaker, planned_route
from gtm.agent.exabgp import (
    GRACEFUL_SHUTDOWN,
    Route,
    announce_command,
    exabgp_config,
    withdraw_command,
)
from gtm.errors import PermanentProviderError
from gtm.models.plan import Announcement, DesiredState
from gtm.models.region import BgpSide, Region
from gtm.models.report import FleetReport
from gtm.testing.bgp import parse_routes

SIDE = BgpSide(local_asn=65001, local_address="127.0.0.11", next_hop="192.0.2.101",
               peers=({"address": "127.0.0.2", "asn": 65000, "port": 17179},),  # type: ignore[arg-type]
               communities=("65001:100",))
PREFIX = "198.51.100.0/24"


def _region() -> Region:
    return Region.model_validate({
        "name": "eu-west-1", "jurisdiction": "EU", "geography": {"continent": "EU"},
        "endpoints": [{"address": "192.0.2.30"}], "bgp": SIDE.model_dump(),
    })


def _report(healthy: bool, ok: int, fail: int) -> FleetReport:
    return FleetReport(region="eu-west-1", agent_id="t:1", seq=ok + fail + 1, observed_at=time.time(),
                       interval_s=2.0, healthy=healthy, consecutive_ok=ok, consecutive_fail=fail,
                       reason="" if healthy else "vllm-a: connection refused")


def _plan(**kw: Any) -> DesiredState:
    a = Announcement(prefix=PREFIX, region="eu-west-1", **{"reason": "test", **kw})
    return DesiredState(generation=1, generated_at=time.time(), policy_digest="d", held=False, hold_reason="",
                        regions={}, pools={}, services={}, endpoints={}, announcements={PREFIX: (a,)})


# -- commands --------------------------------------------------------------------------------


def test_announce_command_carries_prepends_med_and_communities() -> None:
    r = Route(PREFIX, "192.0.2.101", as_path=(65001, 65001, 65001), med=50, communities=("65001:100", "65535:0"))
    assert announce_command(r) == (
        "announce route 198.51.100.0/24 next-hop 192.0.2.101 med 50 community [65001:100 65535:0] "
        "as-path [65001 65001 65001]"
    )
    assert announce_command(Route(PREFIX, "192.0.2.101")) == "announce route 198.51.100.0/24 next-hop 192.0.2.101"
    assert withdraw_command(PREFIX) == "withdraw route 198.51.100.0/24"


@pytest.mark.parametrize("route", [
    Route("198.51.100.0/24\nannounce route 0.0.0.0/0", "192.0.2.1"),   # a second command smuggled in
    Route("198.51.100.1/24", "192.0.2.1"),                              # host bits set
    Route("198.51.100.0/33", "192.0.2.1"),
    Route(PREFIX, "192.0.2.1\nwithdraw route 10.0.0.0/8"),
    Route(PREFIX, "192.0.2.1", communities=("65001:100]\nshutdown",)),
    Route(PREFIX, "192.0.2.1", communities=("70000:1",)),
    Route(PREFIX, "192.0.2.1", as_path=(0,)),
    Route(PREFIX, "192.0.2.1", med=-1),
])
def test_malformed_values_never_become_a_command(route: Route) -> None:
    with pytest.raises(PermanentProviderError):
        announce_command(route)


def test_withdraw_refuses_an_injected_line() -> None:
    with pytest.raises(PermanentProviderError):
        withdraw_command("198.51.100.0/24\rannounce route 0.0.0.0/0 next-hop self")


def test_exabgp_config_has_one_neighbor_per_peer_and_the_bridge(tmp_path: Path) -> None:
    side = SIDE.model_copy(update={"peers": (*SIDE.peers, SIDE.peers[0].model_copy(update={"address": "127.0.0.3",
                                                                                           "asn": 65010}))})
    text = exabgp_config(side, tmp_path / "api.sock", python="/usr/bin/python3")
    assert text.count("neighbor 127.0.0.") == 2
    assert "peer-as 65010;" in text and "peer-as 65000;" in text
    assert "connect 17179;" in text and "local-address 127.0.0.11;" in text and "router-id 127.0.0.11;" in text
    assert f"exabgp_bridge.py --socket {tmp_path / 'api.sock'};" in text
    assert "api { processes [ gtm ]; neighbor-changes; }" in text


# -- decisions -------------------------------------------------------------------------------


def test_planned_route_maps_prepend_med_and_allowed_communities() -> None:
    a = Announcement(prefix=PREFIX, region="eu-west-1", action="announce", prepend=2, med=20,
                     communities=("65001:100", "65009:9"))
    r = planned_route(a, SIDE)
    assert r.as_path == (65001, 65001, 65001) and r.prepend == 2
    assert r.med == 20 and r.next_hop == "192.0.2.101"
    assert r.communities == ("65001:100",)  # 65009:9 is not in the region's communities
    full = planned_route(Announcement(prefix=PREFIX, region="eu-west-1", action="announce"), SIDE)
    assert full.as_path == () and full.med is None and full.communities == ()


async def test_fleet_fall_withdraws_and_rise_with_plan_announces(redis_store: Any, tmp_path: Path) -> None:
    sp = BgpSpeaker(_region(), redis_store, BgpSettings(fall=2, rise=3), tmp_path, "t:1", manage_process=False)
    sp.take_plan(_plan(action="announce", prepend=1))
    now = time.monotonic()
    assert sp.wanted(now)[0].route is None  # no check of the own fleet yet
    sp.observe(_report(True, 1, 0))
    assert sp.wanted(now)[0].route == planned_route(sp.plan[PREFIX], SIDE)
    sp.observe(_report(False, 0, 1))  # one failed check: not yet
    assert sp.wanted(now)[0].route is not None
    sp.observe(_report(False, 0, 2))  # fall
    w = sp.wanted(now)[0]
    assert w.route is None and "own fleet failing" in w.reason
    sp.observe(_report(True, 2, 0))
    assert sp.wanted(now)[0].route is None  # not risen yet
    sp.observe(_report(True, 3, 0))
    assert sp.wanted(now)[0].route is not None
    sp.take_plan(_plan(action="withdraw", reason="failover"))
    assert sp.wanted(now)[0].route is None  # the plan must say announce too


async def test_planned_withdrawal_of_a_prefix_never_announced_is_immediate(redis_store: Any, tmp_path: Path) -> None:
    sp = BgpSpeaker(_region(), redis_store, BgpSettings(graceful_s=5), tmp_path, "t:1", manage_process=False)
    sp.observe(_report(True, 1, 0))
    sp.take_plan(_plan(action="withdraw", planned=True))
    assert sp.wanted(time.monotonic())[0].route is None


def test_a_region_without_bgp_cannot_have_a_speaker(tmp_path: Path) -> None:
    region = _region().model_copy(update={"bgp": None})
    with pytest.raises(PermanentProviderError, match="no bgp section"):
        BgpSpeaker(region, None, BgpSettings(), tmp_path, "t:1", manage_process=False)  # type: ignore[arg-type]


async def test_bgp_state_round_trips_through_redis(redis_store: Any, tmp_path: Path) -> None:
    sp = BgpSpeaker(_region(), redis_store, BgpSettings(), tmp_path, "t:1", manage_process=False)
    sp.observe(_report(True, 1, 0))
    sp.take_plan(_plan(action="announce", prepend=2))
    await redis_store.put_bgp_state(sp.state(), 5.0)
    got = await redis_store.get_bgp_states(["eu-west-1", "us-east-1"])
    assert list(got) == ["eu-west-1"]
    st = got["eu-west-1"]
    assert st.fleet_up is True and st.connected is False and st.plan_generation == 1
    route = st.routes[PREFIX]
    assert route.plan_action == "announce" and route.wanted == "announce"
    assert route.sent_action is None and route.acked is None  # nothing sent: no ExaBGP connected


# -- BIRD's table ------------------------------------------------------------------------------

BIRD_OUTPUT = """BIRD 2.0.12 ready.
Table master4:
198.51.100.0/24      unreachable [r1 21:24:18.859 from 127.0.0.12] * (100) [AS65002i]
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.as_path: 65002
\tBGP.next_hop: 192.0.2.102
\tBGP.local_pref: 100
                     unreachable [r0 21:24:19.001 from 127.0.0.11] (100) [AS65001i]
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.as_path: 65001 65001 65001
\tBGP.next_hop: 192.0.2.101
\tBGP.med: 20
\tBGP.local_pref: 0
\tBGP.community: (65001,100) (65535,0)
"""


def test_parse_bird_routes() -> None:
    best, other = parse_routes(BIRD_OUTPUT)
    assert (best.prefix, best.protocol, best.from_address, best.best) == (PREFIX, "r1", "127.0.0.12", True)
    assert best.as_path == (65002,) and best.next_hop == "192.0.2.102" and best.communities == ()
    assert (other.prefix, other.best, other.as_path) == (PREFIX, False, (65001, 65001, 65001))
    assert other.med == 20 and other.local_pref == 0 and other.graceful_shutdown
    assert other.communities == ("65001:100", GRACEFUL_SHUTDOWN)


# -- gtm status and /metrics read the stored state ---------------------------------------------


def _stored_state() -> Any:
    from gtm.models.report import BgpPeerState, BgpRouteState, BgpState

    return BgpState(
        region="eu-west-1", agent_id="t:1", observed_at=time.time(), connected=True, fleet_up=True,
        plan_generation=7, last_ack_at=1_700_000_100.0,
        routes={PREFIX: BgpRouteState(prefix=PREFIX, plan_action="announce", wanted="announce", reason="plan: share 1",
                                      sent_action="announce", sent_next_hop="192.0.2.101", sent_prepend=2,
                                      sent_med=30, sent_at=1_700_000_099.0, acked="done", acked_at=1_700_000_100.0)},
        peers={"127.0.0.2": BgpPeerState(address="127.0.0.2", up=True, event="neighbor 127.0.0.2 up")},
    )


async def test_status_shows_what_the_agent_sent_and_exabgp_acknowledged(redis_store: Any) -> None:
    """``gtm status`` (``gtm.controller.status``) puts the stored BgpState beside the plan's row."""
    from gtm.controller.status import _bgp_states, announcement_rows

    await redis_store.put_bgp_state(_stored_state(), 5.0)
    bgp = await _bgp_states(redis_store, ["eu-west-1", "us-east-1"])
    assert list(bgp) == ["eu-west-1"]
    [row] = announcement_rows(_plan(action="announce", prepend=2, med=30), bgp)
    agent = row["agent"]
    assert agent["connected"] is True and (agent["sessions_up"], agent["sessions"]) == (1, 1)
    assert agent["last_ack_at"] == 1_700_000_100.0
    route = agent["route"]
    assert (route["sent_action"], route["sent_prepend"], route["sent_med"]) == ("announce", 2, 30)
    assert route["acked"] == "done"


async def test_metrics_export_the_agents_announcements_and_last_ack(redis_store: Any) -> None:
    from aiohttp.test_utils import TestClient, TestServer
    from prometheus_client.parser import text_string_to_metric_families

    from gtm.api.app import build_app
    from gtm.config.loader import Config, policy_digest
    from tests.factories import make_inventory, make_policy, make_service

    policy, inv = make_policy([make_service()]), make_inventory()
    cfg = Config(policy=policy, inventory=inv, digest=policy_digest(policy, inv), files=())
    await redis_store.put_bgp_state(_stored_state(), 5.0)
    client = TestClient(TestServer(build_app(redis_store, lambda: cfg, None, None)))
    await client.start_server()
    try:
        text = await (await client.get("/metrics")).text()
    finally:
        await client.close()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    [announced] = fams["gtm_bgp_agent_announced"].samples
    assert announced.labels == {"region": "eu-west-1", "prefix": PREFIX} and announced.value == 1.0
    assert fams["gtm_bgp_agent_last_ack_timestamp_seconds"].samples[0].value == 1_700_000_100.0
    assert fams["gtm_bgp_agent_session_up"].samples[0].labels["peer"] == "127.0.0.2"
    assert fams["gtm_bgp_agent_connected"].samples[0].value == 1.0
