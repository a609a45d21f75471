"""Provider-neutral record sets, changes and plans (octoDNS-style), with ownership.

A provider renders a ``DesiredState`` into ``RecordSet`` values, observes what the zone holds,
and the pure ``diff()`` turns the two into an ordered ``Plan`` of ``Create``/``Update``/
``Delete`` changes, touching only record sets gtm owns.

Names are normalised once, here: lower case, no trailing dot, IDN labels as punycode, so an
existing record is never re-created because of spelling.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gtm.errors import UnsafePlanError
from gtm.models.dnsname import a_label_name
from gtm.models.plan import DesiredState, ServicePlan
from gtm.models.published import OWNER_LABEL

OWNER_PREFIX = OWNER_LABEL
"""Ownership markers are TXT records at ``_gtm-owner.<name>`` (ExternalDNS' TXT registry idea)."""


def normalize_name(name: str) -> str:
    """Lower case, no trailing dot, IDN labels encoded as punycode (``xn--``), as the policy
    spells names (``gtm.models.dnsname.a_label_name``).

    Raises:
        ValueError: an empty name or label, an invalid IDN label, a label longer than 63 octets
            after encoding.
    """
    return a_label_name(name)


def dns_services(state: DesiredState) -> dict[str, ServicePlan]:
    """The services DNS providers publish, by fqdn: all but the anycast-only ones
    (``data_planes: [anycast]``), which publish no record. Zones are still judged from every
    service (``Provider.zones_of``), so a service turning anycast-only has its records deleted."""
    return {fqdn: s for fqdn, s in state.services.items() if s.dns}


def owner_marker_name(name: str) -> str:
    """Where the ownership TXT record for record sets at ``name`` lives."""
    return f"{OWNER_PREFIX}.{normalize_name(name)}"


def owner_marker_value(owner_id: str, types: Iterable[str] = ()) -> str:
    """The TXT value that marks record sets at a name as owned by installation ``owner_id``.

    ``types`` lists the record types gtm owns there (``gtm/types=A+AAAA``): other types at the
    same name (a site-verification TXT, someone's AAAA) stay foreign and are never touched.
    """
    kinds = "+".join(sorted(set(types)))
    return f'"heritage=gtm,gtm/owner={owner_id}' + (f",gtm/types={kinds}" if kinds else "") + '"'


@dataclass(frozen=True, slots=True)
class RecordSet:
    """One record set as a provider holds it.

    Attributes:
        name: owner name, normalised (``normalize_name``).
        rdtype: ``A``, ``AAAA``, ``CNAME``, ``TXT``, ...
        ttl: seconds.
        values: record data, sorted; TXT values quoted.
        set_identifier: distinguishes record sets of one name and type (Route 53
            ``SetIdentifier``), e.g. the region; None for a simple record set.
        weight: 0-255 for a weighted record set, else None.
        geo: ``continent:EU``, ``country:DE`` or ``*`` (default) for a geolocation record set.
        alias_target: name of another record in the zone this one aliases (Route 53 alias);
            ``values`` is then empty.
    """

    name: str
    rdtype: str
    ttl: int
    values: tuple[str, ...] = ()
    set_identifier: str | None = None
    weight: int | None = None
    geo: str | None = None
    alias_target: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity within a zone: (name, type, set identifier or "")."""
        return (self.name, self.rdtype, self.set_identifier or "")

    def value_chars(self) -> int:
        """Characters of record data (Route 53 counts these against 32,000 per request)."""
        return sum(len(v) for v in self.values) + len(self.alias_target or "")


@dataclass(frozen=True, slots=True)
class Change:
    """One change to one record set.

    Attributes:
        action: ``create``, ``update`` or ``delete``.
        old: the record set before (update, delete).
        new: the record set after (create, update).
    """

    action: Literal["create", "update", "delete"]
    old: RecordSet | None = None
    new: RecordSet | None = None

    @property
    def record(self) -> RecordSet:
        rs = self.new if self.new is not None else self.old
        assert rs is not None
        return rs

    @property
    def sort_key(self) -> tuple[int, str, str, str]:
        """Deletes first, then updates, then creates; aliases after their targets on create."""
        order = {"delete": 0, "update": 1, "create": 2}[self.action]
        rs = self.record
        alias_last = "1" if rs.alias_target else "0"
        return (order, alias_last, rs.name, f"{rs.rdtype}/{rs.set_identifier or ''}")


@dataclass(frozen=True)
class Plan:
    """The ordered changes one provider would make to one zone.

    Attributes:
        provider: provider id.
        zone: zone name.
        changes: ordered changes (see ``Change.sort_key``).
        owned_before: record sets gtm owned in the zone before the change.
        conflicts: foreign record sets at names gtm wants (reported, never touched).
    """

    provider: str
    zone: str
    changes: tuple[Change, ...]
    owned_before: int
    conflicts: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.changes

    def destructive(self) -> int:
        """Changes that remove or rewrite data: deletes, and updates whose values or alias target
        change. Weight and TTL changes are routine (every ramp step moves all weights) and are
        not counted."""
        def rewrites(c: Change) -> bool:
            if c.record.name.startswith(OWNER_PREFIX + "."):
                return False  # ownership markers follow the records they mark
            if c.action == "delete":
                return True
            return c.action == "update" and c.old is not None and c.new is not None and (
                c.old.values != c.new.values or c.old.alias_target != c.new.alias_target
            )

        return sum(1 for c in self.changes if rewrites(c))

    def raise_if_unsafe(self, max_fraction: float, *, force: bool = False) -> None:
        """Refuse a plan that deletes or rewrites more than ``max_fraction`` (0..1) of the owned
        record sets (creates into an empty zone, weight and TTL changes are always allowed).

        Raises:
            UnsafePlanError: unless ``force``.
        """
        if force or self.owned_before == 0:
            return
        touched = self.destructive()
        if touched / self.owned_before > max_fraction:
            raise UnsafePlanError(
                f"{self.provider}: plan for {self.zone} deletes/rewrites {touched} of "
                f"{self.owned_before} owned record sets (> {max_fraction:.0%}); use --force"
            )

    def summary(self) -> dict[str, int]:
        out = {"create": 0, "update": 0, "delete": 0}
        for c in self.changes:
            out[c.action] += 1
        return out


@dataclass(frozen=True)
class Observed:
    """What a provider holds in one zone.

    Attributes:
        zone: zone name.
        owned: record sets gtm owns (ownership marker present for this installation),
            including the markers themselves.
        foreign: record sets at names gtm manages that another owner holds.
        other_owners: names owned by another gtm installation.
    """

    zone: str
    owned: tuple[RecordSet, ...]
    foreign: tuple[RecordSet, ...] = ()
    other_owners: tuple[str, ...] = field(default=())


def parse_owner_marker(value: str) -> tuple[str, frozenset[str] | None] | None:
    """``(owner_id, owned types or None for every type)`` from a marker TXT value, else None."""
    text = value.strip('"')
    if not text.startswith("heritage=gtm,"):
        return None
    fields = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    owner = fields.get("gtm/owner")
    if not owner:
        return None
    types = fields.get("gtm/types")
    return owner, (frozenset(t for t in types.split("+") if t) if types else None)


def split_ownership(
    zone: str, records: Iterable[RecordSet], owner_id: str, managed_names: Iterable[str] = ()
) -> Observed:
    """Sort a zone's record sets into owned and foreign by their ownership markers.

    Record sets at a name are owned when ``_gtm-owner.<name>`` holds this installation's
    marker and lists their type (a marker without a type list, as older versions wrote, owns
    every type); the markers themselves count as owned. Other record sets at managed or owned
    names are foreign: reported as conflicts where gtm wants the same name and type, never
    changed. Names marked by another installation are listed in ``other_owners``.
    """
    records = list(records)
    owned_names: dict[str, frozenset[str] | None] = {}  # name → owned types (None: every type)
    others: set[str] = set()
    for rs in records:
        if rs.rdtype == "TXT" and rs.name.startswith(OWNER_PREFIX + "."):
            target = rs.name[len(OWNER_PREFIX) + 1 :]
            parsed = [m for m in (parse_owner_marker(v) for v in rs.values) if m is not None]
            mine = [types for owner, types in parsed if owner == owner_id]
            if mine:
                owned_names[target] = mine[0]
            elif parsed:
                others.add(target)
    managed = {normalize_name(n) for n in managed_names}
    owned: list[RecordSet] = []
    foreign: list[RecordSet] = []
    for rs in records:
        is_marker = rs.name.startswith(OWNER_PREFIX + ".")
        target = rs.name[len(OWNER_PREFIX) + 1 :] if is_marker else rs.name
        if target in owned_names and (
            is_marker or owned_names[target] is None or rs.rdtype in owned_names[target]  # type: ignore[operator]
        ):
            owned.append(rs)
        elif (target in managed or target in owned_names) and not is_marker:
            foreign.append(rs)
    return Observed(zone=zone, owned=tuple(owned), foreign=tuple(foreign), other_owners=tuple(sorted(others)))


def blocked_by_foreign(observed: Observed) -> dict[str, frozenset[str]]:
    """Per name, the record types gtm must not write because a foreign record set holds them.

    A foreign CNAME blocks every type at its name (a CNAME cannot share a name), and so does
    any foreign record set for a CNAME of ours.
    """
    out: dict[str, set[str]] = {}
    for rs in observed.foreign:
        out.setdefault(rs.name, set()).add(rs.rdtype)
    return {
        name: frozenset({"A", "AAAA", "CNAME", "TXT"} if "CNAME" in kinds else kinds | {"CNAME"})
        for name, kinds in out.items()
    }


def diff(
    provider: str, zone: str, desired: Sequence[RecordSet], observed: Observed
) -> Plan:
    """The ordered changes that turn ``observed.owned`` into ``desired`` (pure).

    Desired record sets at a name held by a foreign owner or another gtm installation are not
    planned; they are reported in ``conflicts``. Owned record sets that are no longer desired
    are deleted.
    """
    blocked_types = blocked_by_foreign(observed)
    others = set(observed.other_owners)
    have = {rs.key: rs for rs in observed.owned}
    want: dict[tuple[str, str, str], RecordSet] = {}
    conflicts: list[str] = []
    kept_types: dict[str, set[str]] = {}
    markers: list[RecordSet] = []
    for rs in desired:
        is_marker = rs.name.startswith(OWNER_PREFIX + ".")
        base = rs.name[len(OWNER_PREFIX) + 1 :] if is_marker else rs.name
        if base in others:
            conflicts.append(f"{rs.name} {rs.rdtype}: owned by another gtm installation; left alone")
            continue
        if is_marker:
            markers.append(rs)
            continue
        if rs.rdtype in blocked_types.get(base, ()):
            conflicts.append(f"{rs.name} {rs.rdtype}: held by another owner (a foreign record set); left alone")
            continue
        kept_types.setdefault(base, set()).add(rs.rdtype)
        want[rs.key] = rs
    for m in markers:
        # The marker claims only the types actually written; none left: no claim at all.
        base = m.name[len(OWNER_PREFIX) + 1 :]
        parsed = [p for p in (parse_owner_marker(v) for v in m.values) if p is not None]
        if base not in kept_types or not parsed:
            continue
        want[m.key] = RecordSet(m.name, m.rdtype, m.ttl, (owner_marker_value(parsed[0][0], kept_types[base]),))
    changes: list[Change] = []
    for key, rs in want.items():
        old = have.get(key)
        if old is None:
            changes.append(Change("create", new=rs))
        elif old != rs:
            changes.append(Change("update", old=old, new=rs))
    for key, rs in have.items():
        if key not in want:
            changes.append(Change("delete", old=rs))
    changes.sort(key=lambda c: c.sort_key)
    return Plan(
        provider=provider, zone=zone, changes=tuple(changes), owned_before=len(have),
        conflicts=tuple(sorted(set(conflicts))),
    )
