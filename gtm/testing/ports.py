"""The one spare-port helper for the servers tests, drills, benchmarks and the demo start."""

from __future__ import annotations

import random
import socket

__all__ = ["free_port"]

_given: set[int] = set()
"""Ports this process has handed out: a server started later may not have bound its port yet,
so the same number must not be handed out twice."""


def free_port(host: str = "127.0.0.1", low: int = 20000, high: int = 32000) -> int:
    """A port free for both TCP and UDP on ``host`` right now, below the ephemeral range.

    Below 32768 so that no outgoing connection's ephemeral port takes it between this check and
    the server's bind; free for UDP too, so a DNS server can take both. Never the same port
    twice in one process (servers picked together bind later). Raises ``RuntimeError`` when 200
    random picks in ``low``-``high`` are all taken.
    """
    for _ in range(200):
        port = random.randint(low, high)
        if port in _given:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
                u.bind((host, port))
                t.bind((host, port))
        except OSError:
            continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free UDP+TCP port in {low}-{high} on {host}")
