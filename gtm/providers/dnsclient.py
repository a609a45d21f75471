"""A small DNS client for the demo, tests and benchmarks: real queries, optionally with ECS.

Queries are sent without RD (an authoritative server is asked directly) and with EDNS0.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import Mapping

import dns.asyncquery
import dns.edns
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype

__all__ = ["answer_shares", "query", "region_of"]

NO_ANSWER = "none"
"""``answer_shares`` key for responses naming no region: NODATA, errors and timeouts."""


async def query(
    server: str,
    port: int,
    qname: str,
    rdtype: str = "A",
    *,
    client_subnet: str | None = None,
    tcp: bool = False,
    timeout: float = 1.0,
) -> dns.message.Message:
    """Send one query and return the response.

    Args:
        server: the server's IP address.
        port: the server's port.
        qname: the name asked.
        rdtype: the type asked (``A``, ``AAAA``, ``SOA``...).
        client_subnet: an EDNS Client Subnet to send, e.g. ``"100.96.5.0/24"``; host bits are
            cleared, the prefix length is the ECS source prefix length.
        tcp: query over TCP instead of UDP.
        timeout: seconds to wait for the response.

    Returns:
        The response message, whatever its rcode.

    Raises:
        TimeoutError: no response within ``timeout``.
        ValueError: ``client_subnet`` or ``rdtype`` is malformed.
        dns.exception.DNSException: the response could not be parsed or did not match.
        OSError: the socket failed (e.g. connection refused over TCP).
    """
    options: list[dns.edns.Option] = []
    if client_subnet is not None:
        net = ipaddress.ip_network(client_subnet, strict=False)
        options.append(dns.edns.ECSOption(str(net.network_address), net.prefixlen))
    try:
        qtype = dns.rdatatype.from_text(rdtype)
    except dns.exception.DNSException as exc:
        raise ValueError(f"query: {rdtype!r} is not a DNS type") from exc
    message = dns.message.make_query(qname, qtype, use_edns=0, options=options, flags=0)
    try:
        if tcp:
            return await dns.asyncquery.tcp(message, server, timeout=timeout, port=port)
        return await dns.asyncquery.udp(message, server, timeout=timeout, port=port)
    except dns.exception.Timeout as exc:
        raise TimeoutError(
            f"query: no response from {server}:{port} for {qname} {rdtype} in {timeout}s"
        ) from exc


def region_of(response: dns.message.Message, address_to_region: Mapping[str, str]) -> str:
    """The region a response names: that of its first A/AAAA/CNAME answer.

    Args:
        response: a DNS response.
        address_to_region: endpoint value (address, or hostname with its trailing dot) →
            region name.

    Returns:
        The region; the value itself when it is not in ``address_to_region``; ``none`` for a
        non-NOERROR response or an empty answer.
    """
    if response.rcode() != dns.rcode.NOERROR:
        return NO_ANSWER
    for rrset in response.answer:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.CNAME):
            for rdata in rrset:
                value = rdata.to_text()
                return address_to_region.get(value, value)
    return NO_ANSWER


async def answer_shares(
    server: str,
    port: int,
    qname: str,
    client_subnet: str | None,
    n: int,
    address_to_region: Mapping[str, str],
    *,
    rdtype: str = "A",
    concurrency: int = 16,
    timeout: float = 1.0,
) -> dict[str, float]:
    """Send ``n`` real queries and return the share of answers naming each region.

    Args:
        server: the server's IP address.
        port: the server's port.
        qname: the service name.
        client_subnet: the ECS subnet to send, or None for none.
        n: how many queries (> 0).
        address_to_region: endpoint value → region name (see ``region_of``).
        rdtype: the type asked.
        concurrency: queries in flight at once.
        timeout: seconds to wait for each response.

    Returns:
        Region (or ``none`` for NODATA, errors and timeouts) → fraction of the ``n`` answers;
        the fractions sum to 1.

    Raises:
        ValueError: ``n`` or ``concurrency`` is not positive.
    """
    if n <= 0 or concurrency <= 0:
        raise ValueError(f"answer_shares: n ({n}) and concurrency ({concurrency}) must be > 0")
    counts: Counter[str] = Counter()
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            try:
                response = await query(
                    server, port, qname, rdtype, client_subnet=client_subnet, timeout=timeout
                )
            except (TimeoutError, OSError, dns.exception.DNSException):
                counts[NO_ANSWER] += 1
                return
        counts[region_of(response, address_to_region)] += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(n):
            group.create_task(one())
    return {region: count / n for region, count in sorted(counts.items())}
