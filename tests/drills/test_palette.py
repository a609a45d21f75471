"""Region colours are fixed per name and distinct within a report; health states by their first
word."""

from __future__ import annotations

from gtm.drills.palette import REGION_PALETTE, STATE_COLOURS, UNRESOLVED, region_colours, state_colour

FOUR = ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1"]


def test_a_region_keeps_its_colour_in_every_report_of_the_same_regions() -> None:
    together = region_colours(FOUR)
    assert region_colours(reversed(FOUR)) == together
    assert len(set(together.values())) == 4
    with_none = region_colours([*FOUR, "none"])
    assert with_none["none"] == UNRESOLVED and {r: with_none[r] for r in FOUR} == together


def test_a_name_keeps_its_colour_when_later_names_join() -> None:
    """Names claim their hashed slot in sorted order, so a name sorting after every other one
    never moves them (a region added to the fleet does not recolour the plots)."""
    first = region_colours(FOUR[2:])  # the two EU regions
    grown = region_colours(FOUR)  # us-* sort after eu-*
    assert {r: grown[r] for r in first} == first
    assert region_colours(["eu-west-1"])["eu-west-1"] == first["eu-west-1"]


def test_colours_are_distinct_up_to_the_palette_size() -> None:
    names = [f"region-{i}" for i in range(len(REGION_PALETTE))]
    colours = region_colours(names)
    assert len(set(colours.values())) == len(REGION_PALETTE)
    assert set(colours.values()) == set(REGION_PALETTE)
    assert not set(colours.values()) & set(STATE_COLOURS.values()) - {STATE_COLOURS["degraded"]}


def test_state_colour_by_first_word() -> None:
    assert state_colour("healthy (drain)") == state_colour("healthy") == STATE_COLOURS["healthy"]
    assert state_colour("unhealthy (failover)") == STATE_COLOURS["unhealthy"]
    assert state_colour("weird") == STATE_COLOURS["unknown"]
