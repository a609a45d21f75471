"""One name resolution through a recursive resolver, as a drill's client does it.

A client population asks a caching resolver (``gtm.drills.unbound.Unbound`` or the operator's
``--resolver``) for the service name with RD set and, to stand in for clients somewhere else,
an EDNS Client Subnet option naming their subnet. UDP first; TCP when the answer is truncated.
DNS failures never raise: they are reported in :class:`Resolution`.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field

import dns.asyncquery
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

__all__ = ["Resolution", "resolve"]


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome of one resolution.

    Attributes:
        addresses: the A records answered, in answer order (empty on NODATA or failure).
        ttl: the answer's remaining TTL as the resolver gave it, seconds (0 when none).
        elapsed_ms: time from sending the query to the response (or the failure), milliseconds.
        rcode: the response code (``NOERROR``, ``SERVFAIL``, ``REFUSED``...), or ``""`` when no
            response arrived.
        error: why there is no usable answer (timeout, socket error, malformed response, an
            rcode other than NOERROR, no address); ``""`` when ``addresses`` is set.
    """

    addresses: list[str] = field(default_factory=list)
    ttl: int = 0
    elapsed_ms: float = 0.0
    rcode: str = ""
    error: str = ""


async def resolve(resolver: tuple[str, int], fqdn: str, subnet: str | None, timeout_s: float) -> Resolution:
    """Ask ``resolver`` for the A records of ``fqdn``, as a client in ``subnet``. Never raises for
    DNS failures.

    Args:
        resolver: the resolver's ``(host, port)``.
        fqdn: the name to resolve.
        subnet: the client subnet sent as EDNS Client Subnet (e.g. ``"100.96.5.0/24"``; host
            bits are cleared), or None to send no ECS option.
        timeout_s: deadline of the whole resolution (UDP and a TCP retry), seconds.

    Returns:
        The resolution; ``error`` says why it has no address.

    Raises:
        ValueError: ``subnet`` is not an IP network (a caller's bug, not a DNS failure).
    """
    options: list[dns.edns.Option] = []
    if subnet is not None:
        net = ipaddress.ip_network(subnet, strict=False)
        options.append(dns.edns.ECSOption(str(net.network_address), net.prefixlen))
    query = dns.message.make_query(fqdn, dns.rdatatype.A, use_edns=0, options=options, flags=dns.flags.RD)
    host, port = resolver
    t0 = time.monotonic()

    def elapsed() -> float:
        return round((time.monotonic() - t0) * 1000.0, 3)

    try:
        response = await dns.asyncquery.udp(query, host, timeout=timeout_s, port=port)
        if response.flags & dns.flags.TC:
            left = max(0.001, timeout_s - (time.monotonic() - t0))
            response = await dns.asyncquery.tcp(query, host, timeout=left, port=port)
    except dns.exception.Timeout:
        return Resolution(elapsed_ms=elapsed(), error=f"no response from {host}:{port} within {timeout_s:g}s")
    except (dns.exception.DNSException, OSError, EOFError) as exc:
        return Resolution(elapsed_ms=elapsed(), error=f"{type(exc).__name__}: {exc}"[:300])
    rcode = dns.rcode.to_text(response.rcode())
    addresses: list[str] = []
    ttl = 0
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.A:
            addresses.extend(rd.to_text() for rd in rrset)
            ttl = int(rrset.ttl)
    error = ""
    if response.rcode() != dns.rcode.NOERROR:
        error = f"rcode {rcode}"
    elif not addresses:
        error = "no address in the answer"
    return Resolution(addresses=addresses, ttl=ttl, elapsed_ms=elapsed(), rcode=rcode, error=error)
