"""The one spare-port helper for the servers tests, drills, benchmarks and the demo start."""

from __future__ import annotations

import random
import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1", low: int = 20000, high: int = 32000) -> int:
    """A port free for both TCP and UDP on ``host`` right now, below the ephemeral range.

    Below 32768 so that no outgoing connection's ephemeral port takes it between this check and
    the server's bind; free for UDP too, so a DNS server can take both. Raises ``RuntimeError``
    when 200 random picks in ``low``-``high`` are all taken.
    """
    for _ in range(200):
        port = random.randint(low, high)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
                u.bind((host, port))
                t.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free UDP+TCP port in {low}-{high} on {host}")
