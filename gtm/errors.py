"""The one exception tree of gtm.

::

    GtmError
    ├── ConfigError (ValueError)        a policy or inventory file is invalid; carries every reason
    ├── StoreError                      the Redis store failed or is unreachable
    │   └── LeaseLostError              this controller no longer holds the leader lease
    ├── ReportRejectedError (ValueError) an agent report failed validation (counted, never fatal)
    ├── ScrapeError                     a fleet source could not be scraped or parsed
    ├── ProviderError                   a DNS / anycast provider refused or failed a change
    │   ├── TemporaryProviderError      retry later (throttling, 5xx, timeouts)
    │   └── PermanentProviderError      do not retry (bad credentials, invalid change)
    └── TaskCrashedError                a daemon's background task died (the daemon stopped)

Third-party exceptions are translated at the boundary and raised ``from`` the original.
"""

from __future__ import annotations

from collections.abc import Sequence


class GtmError(Exception):
    """Root of every error gtm raises on purpose."""


class ConfigError(GtmError, ValueError):
    """A configuration file is invalid.

    Attributes:
        reasons: one line per problem, each naming the file, the field path and the value.
    """

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = list(reasons)
        super().__init__("\n".join(self.reasons) if self.reasons else "invalid configuration")


class StoreError(GtmError):
    """The Redis store failed or could not be reached."""


class LeaseLostError(StoreError):
    """The leader lease expired or was taken by another controller (stale fencing token)."""


class ReportRejectedError(GtmError, ValueError):
    """An agent report is malformed; it is dropped and counted, never applied."""


class ScrapeError(GtmError):
    """A fleet source could not be scraped or its exposition could not be parsed."""


class ProviderError(GtmError):
    """A provider failed to observe or apply a change."""


class TemporaryProviderError(ProviderError):
    """A provider failure worth retrying later.

    Attributes:
        delay: suggested wait before the next attempt, in seconds.
    """

    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentProviderError(ProviderError):
    """A provider failure that retrying will not fix."""


class TaskCrashedError(GtmError):
    """A daemon's background task raised; the daemon stopped (see ``gtm.tasks.Supervisor``).

    Attributes:
        failures: ``(task name, exception)`` of each task that crashed.
    """

    def __init__(self, failures: Sequence[tuple[str, BaseException]]) -> None:
        self.failures = list(failures)
        super().__init__("; ".join(f"task {name} crashed: {type(exc).__name__}: {exc}" for name, exc in self.failures))
