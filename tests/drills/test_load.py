"""Client populations of a drill (pure parts of gtm.drills.load)."""

from __future__ import annotations

import pytest

from gtm.drills.load import Population, address_regions, default_populations, parse_population
from gtm.errors import UsageError
from gtm.models.policy import Segment, SegmentMatch
from gtm.models.region import Geography, Inventory
from tests.factories import eu_segment, make_inventory, make_service


def _inventory() -> Inventory:
    nets = {"eu-central-1": "100.97.0.0/16", "eu-west-1": "100.96.0.0/16", "us-east-1": "100.64.0.0/16",
            "us-west-2": "100.65.0.0/16"}
    inv = make_inventory()
    return Inventory(regions={
        n: r.model_copy(update={"geography": Geography(continent=r.geography.continent, client_networks=(nets[n],))})
        for n, r in inv.regions.items()})


def test_one_population_per_segment_from_the_inventory() -> None:
    svc = make_service(segments=[eu_segment(), Segment(name="default")])
    pops = default_populations(svc, _inventory())
    assert pops == [Population("eu", "100.97.0.0/16", ("EU",)), Population("default", "100.64.0.0/16", ())]


def test_a_segment_without_a_client_network_is_a_usage_error() -> None:
    svc = make_service(segments=[Segment(name="apac", match=SegmentMatch(continents=("AS",))), Segment(name="default")])
    with pytest.raises(UsageError, match="no region has a client network for segment apac of chat: give one with "
                                         "--population apac=SUBNET"):
        default_populations(svc, _inventory())


def test_client_subnets_spread_over_24s() -> None:
    pop = Population("eu", "100.96.0.0/16")
    assert pop.client_subnets(3) == ["100.96.0.0/24", "100.96.1.0/24", "100.96.2.0/24"]
    assert len(pop.client_subnets()) == 16
    assert Population("x", "100.96.7.0/24").client_subnets() == ["100.96.7.0/24"]
    assert Population("x", "2001:db8::/48").client_subnets(2) == ["2001:db8::/56", "2001:db8:0:100::/56"]


def test_parse_population() -> None:
    svc = make_service(segments=[eu_segment()])
    assert parse_population("eu=100.96.7.0/24", svc) == Population("eu", "100.96.7.0/24", ("EU",))
    assert parse_population("lab=10.1.0.0/16", svc) == Population("lab", "10.1.0.0/16", ())
    with pytest.raises(UsageError, match="--population wants NAME=SUBNET"):
        parse_population("eu", svc)
    with pytest.raises(UsageError, match="--population eu: "):
        parse_population("eu=100.300.0.0/24", svc)


def test_address_regions() -> None:
    assert address_regions(make_inventory())["192.0.2.11"] == "eu-west-1"
