"""Cross-file checks of what DNS will hold: a policy that validates must be publishable.

A name holding a CNAME can hold no other data (RFC 1034 §3.6.2, RFC 2181 §10.1), and a zone
apex always holds SOA and NS. So the check refuses, before any provider is asked:

- a service at its zone apex that would need a CNAME there: a region answering with a
  ``hostname`` endpoint, or a Cloud DNS provider publishing a service with segments (its
  service name is a geo-routed CNAME, ``gtm.models.published``);
- a segment whose pool mixes hostname endpoints with address endpoints (its regions, the
  regions it may spill to, and its fallback service's regions inside its pin all answer at
  one name); for Route 53, the whole service (its name holds aliases of every type of every
  segment);
- a name published twice: a service name equal to the zone's NS glue (``nameserver_addresses``),
  to another service's name, to a pool name a provider derives (``<segment>.<fqdn>`` for
  RFC2136, ``<segment>.pool.<fqdn>`` for Route 53, ``<segment>.gtm-pool.<fqdn>`` for Cloud DNS),
  or to an ownership marker (``_gtm-owner.<name>``) of a name a provider writes.

Each reason is ``field.path: message (value: ...)``; ``load_config`` prefixes the file.
"""

from __future__ import annotations

from gtm.engine.residency import eligible_regions
from gtm.models.policy import Policy, Segment, Service
from gtm.models.published import OWNER_LABEL, clouddns_hops, pool_names
from gtm.models.region import Inventory

_RECORD_KINDS = ("rfc2136", "route53", "clouddns")

_MARKER = "the ownership marker of "


def publish_reasons(policy: Policy, inventory: Inventory) -> list[str]:
    """Every reason ``policy`` cannot be published as written (see the module doc)."""
    reasons: list[str] = []
    kinds = _kinds_by_zone(policy)
    for i, svc in enumerate(policy.services):
        if "dns" not in svc.planes:
            continue  # anycast-only: no DNS record at all
        reasons.extend(_cname_reasons(policy, inventory, i, svc, kinds.get(svc.zone, {})))
    reasons.extend(_collisions(policy, kinds))
    return reasons


def _kinds_by_zone(policy: Policy) -> dict[str, dict[str, str]]:
    """Zone → {record-holding provider kind: the first provider of that kind publishing it}."""
    out: dict[str, dict[str, str]] = {z.name: {} for z in policy.zones}
    for p in policy.providers:
        if p.kind not in _RECORD_KINDS:
            continue
        for z in p.zones or tuple(out):
            out.setdefault(z, {}).setdefault(p.kind, p.name)
    return out


def _segment_where(i: int, svc: Service, seg: Segment) -> str:
    """The field path of a segment; the implicit catch-all (not in the file) is the service's regions."""
    for j, s in enumerate(svc.segments):
        if s is seg:
            return f"services[{i}].segments[{j}]"
    return f"services[{i}].regions"


def _answering(policy: Policy, inventory: Inventory, svc: Service, seg: Segment) -> list[str]:
    """Regions whose endpoints may be answered at ``seg``'s name: its eligible regions, those it
    may spill to, and its fallback service's regions inside its pin."""
    known = inventory.regions
    out = list(eligible_regions(svc, seg, inventory))
    listed = seg.regions if seg.regions is not None else svc.regions
    out += [r for r in listed if r in known and known[r].jurisdiction in seg.spill_to]
    fb = next((s for s in policy.services if s.name == svc.fallback), None)
    if fb is not None:
        cand = next((s for s in fb.all_segments if s.name == seg.name), None) or next(
            (s for s in fb.all_segments if s.is_default), None
        )
        if cand is not None:
            pins = seg.residency.jurisdictions if seg.residency is not None else None
            out += [r for r in eligible_regions(fb, cand, inventory) if pins is None or known[r].jurisdiction in pins]
    return sorted(set(out))


def _split(inventory: Inventory, regions: list[str]) -> tuple[list[str], list[str]]:
    """``(regions with a hostname endpoint, regions with an address endpoint)``."""
    hostname = [r for r in regions if any(e.hostname is not None for e in inventory.regions[r].endpoints)]
    address = [r for r in regions if any(e.address is not None for e in inventory.regions[r].endpoints)]
    return hostname, address


def _cname_reasons(
    policy: Policy, inventory: Inventory, i: int, svc: Service, kinds: dict[str, str]
) -> list[str]:
    reasons: list[str] = []
    all_host: set[str] = set()
    all_addr: set[str] = set()
    for seg in svc.all_segments:
        hostname, address = _split(inventory, _answering(policy, inventory, svc, seg))
        all_host.update(hostname)
        all_addr.update(address)
        if hostname and address:
            reasons.append(
                f"{_segment_where(i, svc, seg)}: segment {seg.name!r} of service {svc.name!r} mixes hostname "
                f"endpoints (regions {hostname}) with address endpoints (regions {address}); its name would hold "
                "a CNAME beside A/AAAA records, which DNS forbids: give the segment's regions one kind of endpoint"
            )
    if "route53" in kinds and all_host and all_addr and not reasons:
        reasons.append(
            f"services[{i}]: service {svc.name!r} mixes hostname endpoints (regions {sorted(all_host)}) with "
            f"address endpoints (regions {sorted(all_addr)}) across its segments; Route 53 provider "
            f"{kinds['route53']!r} publishes every segment's types at {svc.fqdn!r} (a CNAME beside A/AAAA): "
            "give the service's regions one kind of endpoint"
        )
    if svc.fqdn == svc.zone:
        why = []
        if all_host:
            why.append(f"regions {sorted(all_host)} answer with hostname endpoints (a CNAME)")
        segs = [(s.name, s.is_default) for s in svc.all_segments]
        if "clouddns" in kinds and clouddns_hops(segs):
            why.append(f"Cloud DNS provider {kinds['clouddns']!r} publishes a service with segments as a geo CNAME")
        if why:
            reasons.append(
                f"services[{i}].fqdn: service {svc.name!r} is at the apex of zone {svc.zone!r}, but "
                f"{' and '.join(why)}; a CNAME cannot sit at a zone apex (it holds SOA and NS): use address "
                f"endpoints or a name below the apex (value: {svc.fqdn!r})"
            )
    return reasons


def _collisions(policy: Policy, kinds: dict[str, dict[str, str]]) -> list[str]:
    """A name that two things would publish (see the module doc)."""
    claims: dict[str, str] = {}
    reasons: list[str] = []
    for z in policy.zones:
        for host in z.nameserver_addresses:
            if host == z.name or host.endswith("." + z.name):
                claims.setdefault(host, f"NS glue of zone {z.name!r} (nameserver_addresses)")
    for i, svc in enumerate(policy.services):
        if "dns" not in svc.planes:
            continue
        segs = [(s.name, s.is_default) for s in svc.all_segments]
        mine = [(svc.fqdn, f"service {svc.name!r}", f"services[{i}].fqdn")]
        for kind, provider in sorted(kinds.get(svc.zone, {}).items()):
            mine += [
                (n, f"a pool name of service {svc.name!r} ({kind} provider {provider!r})", f"services[{i}].segments")
                for n in pool_names(kind, svc.fqdn, segs)
            ]
        if kinds.get(svc.zone):
            marked = [n for n, _, _ in mine]
            mine += [(f"{OWNER_LABEL}.{n}", f"{_MARKER}{n!r}", f"services[{i}].fqdn") for n in marked]
        seen_here: set[str] = set()
        for name, what, where in mine:
            other = claims.get(name)
            echo = other is not None and other.startswith(_MARKER) and what.startswith(_MARKER)  # names collided
            if other is not None and name not in seen_here and not echo:
                reasons.append(
                    f"{where}: {what} is {name!r}, which the zone also publishes as {other}; one name cannot hold "
                    f"both (value: {name!r})"
                )
            claims.setdefault(name, what)
            seen_here.add(name)
    return reasons
