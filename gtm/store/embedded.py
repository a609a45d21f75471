"""The embedded store (``embedded://``): an in-process fakeredis server, the only importer of
fakeredis. Zero-setup mode for ``gtm demo``, the provider drill and single-process trials;
nothing is shared with another process and nothing survives it.
"""

from __future__ import annotations

import fakeredis
import redis.asyncio as aioredis

__all__ = ["embedded_client"]


def embedded_client() -> aioredis.Redis:
    """A new asyncio client of fakeredis' in-process server (``decode_responses=True``, as the
    store's clients of a real server)."""
    client: aioredis.Redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    return client
