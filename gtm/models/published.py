"""Where each provider kind publishes a service's segment pools (pure naming, one place).

The providers render at these names and the policy check (``gtm.config.publish``) refuses a
policy whose names collide, so both must use these functions:

- ``rfc2136``: the catch-all segment at the service name, every other segment at
  ``<segment>.<fqdn>``;
- ``route53``: every segment at ``<segment>.pool.<fqdn>`` (the service name holds
  geolocation aliases of the endpoints' types);
- ``clouddns``: a service whose only segment is the catch-all at the service name; otherwise
  every segment at ``<segment>.gtm-pool.<fqdn>`` (plus ``nomatch.gtm-pool.<fqdn>`` without a
  catch-all) and a geo-routed **CNAME** at the service name;
- ``embedded``: the service name only.

Every name a record-holding provider writes also gets an ownership marker at
``_gtm-owner.<name>`` (``OWNER_LABEL``).

Names are in ``gtm.models.dnsname.a_label_name`` spelling when ``fqdn`` is.
"""

from __future__ import annotations

from collections.abc import Sequence

OWNER_LABEL = "_gtm-owner"
"""Record-holding providers mark each name they write with a TXT record at ``_gtm-owner.<name>``."""

ROUTE53_POOL_LABEL = "pool"
"""Route 53 pools live at ``<segment>.pool.<service fqdn>``."""

CLOUDDNS_POOL_LABEL = "gtm-pool"
"""Cloud DNS pools live at ``<segment>.gtm-pool.<service fqdn>``."""

CLOUDDNS_NO_MATCH = "nomatch"
"""Cloud DNS: the dark name the ``*`` locations point at when a service has no catch-all."""


def rfc2136_segment_name(fqdn: str, segment: str, is_default: bool) -> str:
    """RFC2136: the service name for the catch-all segment, ``<segment>.<fqdn>`` otherwise."""
    return fqdn if is_default else f"{segment}.{fqdn}"


def route53_pool_name(fqdn: str, segment: str) -> str:
    """Route 53: ``<segment>.pool.<fqdn>``."""
    return f"{segment}.{ROUTE53_POOL_LABEL}.{fqdn}"


def clouddns_pool_name(fqdn: str, segment: str) -> str:
    """Cloud DNS: ``<segment>.gtm-pool.<fqdn>`` (``segment`` may be ``CLOUDDNS_NO_MATCH``)."""
    return f"{segment}.{CLOUDDNS_POOL_LABEL}.{fqdn}"


def clouddns_hops(segments: Sequence[tuple[str, bool]]) -> bool:
    """Cloud DNS: whether a service with these ``(segment, is_default)`` segments is published
    through a geo CNAME at its name (anything but a single catch-all segment)."""
    return not (len(segments) == 1 and segments[0][1])


def pool_names(kind: str, fqdn: str, segments: Sequence[tuple[str, bool]]) -> list[str]:
    """Names other than ``fqdn`` itself that provider ``kind`` publishes for one service.

    Args:
        kind: provider kind (``rfc2136``, ``route53``, ``clouddns``; others publish none).
        fqdn: the service name.
        segments: ``(segment name, is catch-all)`` for every segment of the service.
    """
    if kind == "rfc2136":
        return [rfc2136_segment_name(fqdn, s, d) for s, d in segments if not d]
    if kind == "route53":
        return [route53_pool_name(fqdn, s) for s, _ in segments]
    if kind == "clouddns" and clouddns_hops(segments):
        names = [clouddns_pool_name(fqdn, s) for s, _ in segments]
        if not any(d for _, d in segments):
            names.append(clouddns_pool_name(fqdn, CLOUDDNS_NO_MATCH))
        return names
    return []
