"""The one exception tree of gtm.

::

    GtmError
    ├── ConfigError (ValueError)        a policy or inventory file is invalid; carries every reason
    ├── GitError                        a ``git`` command failed or timed out (Git-backed policies)
    ├── StoreError                      the Redis store failed or is unreachable
    │   └── LeaseLostError              this controller no longer holds the leader lease
    ├── ReportRejectedError (ValueError) an agent report failed validation (counted, never fatal)
    ├── ScrapeError                     a fleet source could not be scraped or parsed
    ├── ProviderError                   a DNS / anycast provider refused or failed a change
    │   ├── TemporaryProviderError      retry later (throttling, 5xx, timeouts)
    │   ├── PartialApplyError           some units (zones, batches, record sets) applied, some refused
    │   └── PermanentProviderError      do not retry (bad credentials, invalid change)
    │       └── UnsafePlanError         a plan would rewrite more of a zone than allowed
    ├── UsageError (ValueError)         an operator's request is malformed (CLI exit 2, HTTP 400)
    ├── RefusedError                    a well-formed request that cannot be done now (exit 3, HTTP 409)
    │   ├── UnknownRegionError          the region is not in the inventory / plan (HTTP 404)
    │   └── RolloutError                a rollout command that does not fit the rollout's state
    ├── StartupError                    a daemon could not start (port taken, ...)
    ├── TaskCrashedError                a daemon's background task died (the daemon stopped)
    └── InvariantError                  a programming error: an illegal state transition; never
                                        shown to an operator as a refusal

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


class GitError(GtmError):
    """A ``git`` command failed or timed out (message: the command and git's stderr)."""


class StoreError(GtmError):
    """The Redis store failed or could not be reached."""


class LeaseLostError(StoreError):
    """The leader lease expired or was taken by another controller (stale fencing token)."""


class ReportRejectedError(GtmError, ValueError):
    """An agent report is malformed; it is dropped and counted, never applied."""


class ScrapeError(GtmError):
    """A fleet source could not be scraped or its exposition could not be parsed."""


class ProviderError(GtmError):
    """A provider failed to observe or apply a change.

    ``str()`` names where it happened: ``<provider> (<kind>) at <server>: <operation>: <detail>``
    (``bind-primary (rfc2136) at 192.0.2.53:53: AXFR gtm.example.com: connection closed ...``),
    leaving out the parts that are not known.

    Attributes:
        detail: what went wrong.
        provider: the provider's id (the policy's ``providers[].name``), or "".
        kind: its kind (``rfc2136``, ``route53``, ``clouddns``, ...), or "".
        server: the server it talked to: ``host:port`` or the endpoint URL, or "".
        operation: what it was doing (``AXFR gtm.example.com``, ``UPDATE zone gtm.example.com``,
            ``ListResourceRecordSets``), or "".
    """

    def __init__(
        self, detail: str, *, provider: str = "", kind: str = "", server: str = "", operation: str = ""
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.provider = provider
        self.kind = kind
        self.server = server
        self.operation = operation

    def with_context(self, *, provider: str, kind: str, server: str, operation: str = "") -> ProviderError:
        """Fill the fields not set yet (a detail starting ``<provider>: `` loses that prefix);
        returns ``self``, so ``raise exc.with_context(...)`` re-raises the same exception."""
        if not self.provider:
            self.provider = provider
            self.detail = self.detail.removeprefix(f"{provider}: ")
        self.kind = self.kind or kind
        self.server = self.server or server
        self.operation = self.operation or operation
        return self

    def __str__(self) -> str:
        head = self.provider + (f" ({self.kind})" if self.kind else "")
        if self.server:
            head = f"{head} at {self.server}" if head else self.server
        return ": ".join(p for p in (head, self.operation, self.detail) if p)


class TemporaryProviderError(ProviderError):
    """A provider failure worth retrying later.

    Attributes:
        delay: suggested wait before the next attempt, in seconds.
    """

    def __init__(
        self, message: str, delay: float = 1.0, *, provider: str = "", kind: str = "", server: str = "",
        operation: str = "",
    ) -> None:
        super().__init__(message, provider=provider, kind=kind, server=server, operation=operation)
        self.delay = delay


class PermanentProviderError(ProviderError):
    """A provider failure that retrying will not fix."""


class PartialApplyError(ProviderError):
    """A publish that applied some units and not others: one refused zone (RFC2136), batch
    (Route 53) or record set (Cloud DNS) never holds back the rest.

    Raised after every unit that could be applied was applied. ``str()`` names the provider and
    every failed unit with its reason. The provider worker records ``applied`` and ``failed``
    (status, ``/metrics``, audit) and retries later; a retry plans again from what the provider
    now holds, so it only re-sends what failed.

    Attributes:
        applied: the units applied, in the provider's terms (``zone gtm.example.com``,
            ``chat.gtm.example.com A``), in order.
        failed: unit → reason it was refused, in order.
        temporary: whether every failure may succeed on a retry (throttling, 5xx); False when
            at least one was refused for good (NOTAUTH, InvalidChangeBatch).
    """

    def __init__(
        self, applied: Sequence[str], failed: dict[str, str], *, temporary: bool, provider: str = "",
        kind: str = "", server: str = "", operation: str = "",
    ) -> None:
        self.applied = list(applied)
        self.failed = dict(failed)
        self.temporary = temporary
        what = "; ".join(f"{unit}: {why}" for unit, why in self.failed.items())
        detail = f"{len(self.failed)} unit(s) refused, {len(self.applied)} applied: {what}"
        super().__init__(detail, provider=provider, kind=kind, server=server, operation=operation)


class UnsafePlanError(PermanentProviderError):
    """A plan touches more than the allowed share of the zone's owned record sets."""


class UsageError(GtmError, ValueError):
    """An operator's request is malformed (a missing reason, a value out of range).

    The CLI exits 2, the HTTP API answers 400. Nothing was written.

    Attributes:
        problems: one line per bad field (``reason: String should have at least 1 character``).
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        self.problems = list(problems) or [message]
        super().__init__(message)


class RefusedError(GtmError):
    """A well-formed request that cannot be done now (the safety rules hold it, the region is
    not damped, the rollout is in another state). The CLI exits 3, the API answers 409.
    Nothing was written."""


class UnknownRegionError(RefusedError):
    """The region named is not in the inventory (or, without local files, not in the plan in
    force). The API answers 404."""


class RolloutError(RefusedError):
    """A rollout command that cannot be done now (unknown name, wrong status, ...)."""


class StartupError(GtmError):
    """A daemon could not start (e.g. its port is taken)."""


class InvariantError(GtmError):
    """A programming error: the code reached a state it must never reach (an illegal rollout
    transition, a plan that breaks an invariant). Never caught as an operator refusal."""


class TaskCrashedError(GtmError):
    """A daemon's background task raised; the daemon stopped (see ``gtm.tasks.Supervisor``).

    Attributes:
        failures: ``(task name, exception)`` of each task that crashed.
    """

    def __init__(self, failures: Sequence[tuple[str, BaseException]]) -> None:
        self.failures = list(failures)
        super().__init__("; ".join(f"task {name} crashed: {type(exc).__name__}: {exc}" for name, exc in self.failures))
