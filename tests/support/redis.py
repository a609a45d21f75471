"""The shared Redis the tests use, from ``GTM_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``, what ``make test`` starts when nothing answers there).

Every test works in a namespace of its own (``gtm:{<ns>}:*``) and deletes only its keys, so a
developer's Redis on any port, or one shared by parallel runs, is safe to point at. Tests that
break Redis on purpose start a private ``redis-server`` instead (``gtm.testing.redis``).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

REDIS_URL = os.environ.get("GTM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
"""The Redis URL every test connects to."""

_parts = urlsplit(REDIS_URL)
REDIS_HOST: str = _parts.hostname or "127.0.0.1"
"""Host of ``REDIS_URL``."""
REDIS_PORT: int = _parts.port or 6379
"""Port of ``REDIS_URL``."""
