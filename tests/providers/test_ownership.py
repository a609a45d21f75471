"""Ownership markers: gtm claims only the names and types it writes."""

from __future__ import annotations

from gtm.providers.records import (
    RecordSet,
    diff,
    owner_marker_name,
    owner_marker_value,
    parse_owner_marker,
    split_ownership,
)

Z = "gtm.example.com"
CHAT = f"chat.{Z}"


def marker(name: str, owner: str = "gtm", types: tuple[str, ...] = ("A",)) -> RecordSet:
    return RecordSet(owner_marker_name(name), "TXT", 300, (owner_marker_value(owner, types),))


def test_marker_round_trip_and_legacy_form() -> None:
    assert parse_owner_marker(owner_marker_value("prod", ["AAAA", "A"])) == ("prod", frozenset({"A", "AAAA"}))
    assert parse_owner_marker('"heritage=gtm,gtm/owner=prod"') == ("prod", None)  # every type
    assert parse_owner_marker('"v=spf1 -all"') is None


def test_foreign_types_at_an_owned_name_are_never_deleted() -> None:
    ours = RecordSet(CHAT, "A", 30, ("192.0.2.10",))
    verification = RecordSet(CHAT, "TXT", 300, ('"google-site-verification=abc"',))
    someones_v6 = RecordSet(CHAT, "AAAA", 300, ("2001:db8::7",))
    observed = split_ownership(Z, [ours, verification, someones_v6, marker(CHAT)], "gtm", [CHAT])
    assert set(observed.owned) == {ours, marker(CHAT)}
    assert set(observed.foreign) == {verification, someones_v6}
    # Failover: gtm's A moves; the foreign TXT and AAAA are untouched (not even planned).
    new = RecordSet(CHAT, "A", 30, ("192.0.2.20",))
    plan = diff("p", Z, [new, marker(CHAT)], observed)
    assert [(c.action, c.record.rdtype) for c in plan.changes] == [("update", "A")]
    assert plan.conflicts == ()


def test_a_foreign_record_of_a_wanted_type_is_a_conflict_and_no_marker_is_claimed() -> None:
    eu = f"eu.{CHAT}"
    foreign = RecordSet(eu, "A", 60, ("198.51.100.7",))
    observed = split_ownership(Z, [foreign], "gtm", [eu])
    plan = diff("p", Z, [RecordSet(eu, "A", 30, ("192.0.2.30",)), marker(eu)], observed)
    assert plan.changes == ()
    assert any(eu in c and "another owner" in c for c in plan.conflicts)


def test_another_installation_is_left_alone() -> None:
    theirs = RecordSet(CHAT, "A", 30, ("203.0.113.1",))
    observed = split_ownership(Z, [theirs, marker(CHAT, owner="staging")], "prod", [CHAT])
    plan = diff("p", Z, [RecordSet(CHAT, "A", 30, ("192.0.2.10",)), marker(CHAT, owner="prod")], observed)
    assert plan.changes == () and observed.other_owners == (CHAT,)
    assert any("another gtm installation" in c for c in plan.conflicts)
