"""The provider contract: observe → plan → apply, with declared capabilities.

Two levels:

- ``Publisher``: anything the controller can hand a ``DesiredState`` to (the embedded DNS
  server serves it directly).
- ``Provider``: a DNS service that holds record sets (Route 53, Cloud DNS, RFC2136). It
  declares what it supports (``SUPPORTS``), renders a state into record sets (pure),
  ``observe``s what a zone holds, diffs the two (pure, ``gtm.providers.records.diff``) and
  ``apply``s only the change, never touching record sets it does not own. Dry run is the
  default of ``apply``; ``publish`` (the controller's path) applies for real.

Subclasses implement ``observe``, ``render`` and ``_apply`` and set ``SUPPORTS`` and ``KIND``;
they map their SDK's errors to ``TemporaryProviderError`` (retry later: throttling, 5xx,
timeouts) or ``PermanentProviderError`` (bad credentials, invalid change), raised ``from`` the
original, naming the operation (``self.context(error, "ListResourceRecordSets")``). Every
``ProviderError`` leaving ``plan_state`` or ``apply`` names the provider, its kind and its server
(``server_text``); a connection closed or reset that a subclass did not translate becomes a
``TemporaryProviderError`` there, so an operator never sees a bare ``EOFError``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from gtm.errors import PartialApplyError, PermanentProviderError, ProviderError, TemporaryProviderError
from gtm.log import get_logger
from gtm.models.plan import DesiredState
from gtm.providers.records import (
    OWNER_PREFIX,
    Observed,
    Plan,
    RecordSet,
    diff,
    owner_marker_name,
    owner_marker_value,
)


@runtime_checkable
class Publisher(Protocol):
    """A target the controller publishes desired routing to.

    Attributes:
        name: unique provider id, used in metrics, status and ``gtm:{ns}:applied:<name>``.
    """

    name: str

    async def publish(self, state: DesiredState) -> bool:
        """Make the provider serve ``state``.

        Returns:
            True when something was written, False when the provider already held it.

        Raises:
            ProviderError: the write failed (``TemporaryProviderError`` to retry later).
        """
        ...


@dataclass(frozen=True)
class ApplyResult:
    """What ``apply`` did: API calls made and changes sent (0 and 0 on a dry run)."""

    api_calls: int
    changes: int
    dry_run: bool


class Provider(ABC):
    """Base class of record-holding DNS providers.

    Args:
        name: provider id (unique in the policy).
        owner_id: this installation's id, written in ownership markers.
        zones: the zones this provider may change; others are never touched.
        max_change_fraction: a plan that updates or deletes more than this share (0..1) of
            a zone's owned record sets is refused unless forced.
        strict: raise instead of degrading when the policy needs an unsupported capability.
    """

    SUPPORTS: ClassVar[frozenset[str]] = frozenset()
    """Capabilities: record types (``A``, ``AAAA``, ``CNAME``) and ``WEIGHTED``, ``GEO``, ``ALIAS``."""

    KIND: ClassVar[str] = ""
    """The policy's ``providers[].kind`` of this class (``rfc2136``, ``route53``...)."""

    def __init__(
        self,
        name: str,
        *,
        owner_id: str,
        zones: Sequence[str],
        max_change_fraction: float = 0.5,
        strict: bool = True,
    ) -> None:
        self.name = name
        self.owner_id = owner_id
        self.zones = tuple(zones)
        self.max_change_fraction = max_change_fraction
        self.strict = strict
        self.log = get_logger(f"provider.{name}")
        self.last_policy_digest = ""
        """Policy digest of the last state published (seeded from Redis by the controller)."""

    # -- to implement ------------------------------------------------------------------

    @abstractmethod
    async def observe(self, zone: str, managed_names: Sequence[str] = ()) -> Observed:
        """What the provider holds in ``zone``, split by ownership (``split_ownership``).

        Args:
            zone: the zone.
            managed_names: names gtm wants to write; record sets there that another owner
                holds are reported as ``foreign`` (conflicts).
        """

    @abstractmethod
    def render(self, state: DesiredState, zone: str) -> list[RecordSet]:
        """The record sets ``state`` needs in ``zone``, without ownership markers (pure)."""

    @abstractmethod
    async def _apply(self, plan: Plan) -> int:
        """Send ``plan``'s changes; returns the number of API calls made."""

    @property
    def server_text(self) -> str:
        """The server this provider talks to, for errors: ``host:port`` or an endpoint URL."""
        return ""

    # -- provided ----------------------------------------------------------------------

    def context(self, error: ProviderError, operation: str = "") -> ProviderError:
        """``error`` naming this provider, its kind, its server and ``operation`` (fields already
        set are kept); returns the same exception."""
        return error.with_context(provider=self.name, kind=self.KIND, server=self.server_text, operation=operation)

    def _unexpected(self, exc: OSError | EOFError, operation: str) -> ProviderError:
        """A transport failure the subclass did not translate: temporary, with full context."""
        closed = isinstance(exc, EOFError)
        what = "the server closed the connection without answering" if closed else "connection failed"
        return self.context(TemporaryProviderError(f"{what} ({type(exc).__name__}: {exc})"), operation)

    def supports(self, capability: str) -> bool:
        return capability in self.SUPPORTS

    def supports_warn_or_except(self, message: str) -> None:
        """A capability gap: raise ``PermanentProviderError`` when strict, else log a warning."""
        if self.strict:
            raise PermanentProviderError(f"{self.name}: {message}")
        self.log.warning("supports_warn_or_except: %s", message)

    def with_markers(self, records: Sequence[RecordSet], ttl: int = 300) -> list[RecordSet]:
        """``records`` plus one ownership TXT marker per distinct name, listing the types owned."""
        types: dict[str, set[str]] = {}
        for r in records:
            types.setdefault(r.name, set()).add(r.rdtype)
        markers = [
            RecordSet(
                name=owner_marker_name(n), rdtype="TXT", ttl=ttl,
                values=(owner_marker_value(self.owner_id, types[n]),),
            )
            for n in sorted(types)
        ]
        return [*records, *markers]

    def plan(self, desired: Sequence[RecordSet], observed: Observed) -> Plan:
        """Pure diff of desired (markers included) against what is owned."""
        return diff(self.name, observed.zone, desired, observed)

    def zones_of(self, state: DesiredState) -> list[str]:
        """Zones of ``state`` this provider manages."""
        return sorted({s.zone for s in state.services.values()} & set(self.zones))

    async def plan_state(self, state: DesiredState) -> list[Plan]:
        """Render first, then observe each managed zone with the rendered names (so foreign
        record sets at those names are reported and left alone), and plan (no write).

        Raises:
            ProviderError: naming this provider, its kind, server and operation.
        """
        return [await self.plan_zone(state, zone) for zone in self.zones_of(state)]

    async def plan_zone(self, state: DesiredState, zone: str) -> Plan:
        """``plan_state`` for one zone of ``state``.

        Raises:
            ProviderError: naming this provider, its kind, server and operation.
        """
        operation = f"render {zone}"
        try:
            desired = self.with_markers(self.render(state, zone))
            names = sorted({r.name for r in desired if not r.name.startswith(OWNER_PREFIX + ".")})
            operation = f"observe {zone}"
            observed = await self.observe(zone, managed_names=names)
        except ProviderError as exc:
            self.context(exc, operation)  # the same exception, its cause kept
            raise
        except (OSError, EOFError) as exc:
            raise self._unexpected(exc, operation) from exc
        return self.plan(desired, observed)

    async def apply(self, plan: Plan, *, dry_run: bool = True, force: bool = False) -> ApplyResult:
        """Apply ``plan``; a dry run (the default) or an empty plan makes no API call.

        Raises:
            UnsafePlanError: the plan touches too much of the zone and ``force`` is not set.
            ProviderError: the provider refused or failed (naming provider, kind, server, operation).
        """
        if plan.empty or dry_run:
            return ApplyResult(api_calls=0, changes=0 if dry_run else len(plan.changes), dry_run=dry_run)
        operation = f"apply {plan.zone}"
        try:
            plan.raise_if_unsafe(self.max_change_fraction, force=force)
            for c in plan.conflicts:
                self.log.warning("apply: %s", c)
            calls = await self._apply(plan)
        except ProviderError as exc:
            self.context(exc, operation)  # the same exception, its cause kept
            raise
        except (OSError, EOFError) as exc:
            raise self._unexpected(exc, operation) from exc
        self.log.info("apply: %s %s in %d call(s)", plan.zone, plan.summary(), calls)
        return ApplyResult(api_calls=calls, changes=len(plan.changes), dry_run=False)

    async def publish(self, state: DesiredState) -> bool:
        """``Publisher`` entry point: plan and apply for real; True if anything was written.

        Zones are independent: a zone that cannot be observed, rendered or written (NOTAUTH,
        REFUSED, a failed prerequisite, a timeout) never holds back the others. Every zone is
        planned first, then each is applied; the zones (or, inside a zone, the record sets or
        batches a provider isolates itself) that failed are named in one ``PartialApplyError``
        raised at the end.

        The unsafe-plan gate (``max_change_fraction``) guards policy changes, not failovers:
        once this provider has planned and gated a state of a policy, later states of the
        same policy (whose changes come from health and operators' drains, already judged by the
        engine's safety rules) are applied whatever their size. A new or unknown policy is gated,
        and an unsafe zone stops the whole publish before anything is written.

        Raises:
            PartialApplyError: some units failed (``failed``: unit → reason) while the others
                were applied or already held the state (``applied``: ``zone <name>`` or the
                provider's finer units); ``temporary`` when every failure may pass on a retry.
                Also raised when every unit failed and there were several.
            UnsafePlanError: a zone's plan touches too much of it and the policy is new.
            ProviderError: the only unit (a single zone) failed: its own error, unchanged.
        """
        same_policy = bool(state.policy_digest) and state.policy_digest == self.last_policy_digest
        applied: list[str] = []
        failed: dict[str, str] = {}
        errors: list[ProviderError] = []
        plans: list[Plan] = []
        for zone in self.zones_of(state):
            try:
                plans.append(await self.plan_zone(state, zone))
            except ProviderError as exc:
                failed[f"zone {zone}"] = _reason(exc)
                errors.append(exc)
        for plan in plans:
            try:
                plan.raise_if_unsafe(self.max_change_fraction, force=same_policy)
            except ProviderError as exc:
                self.context(exc, f"apply {plan.zone}")  # the same exception
                raise
        # Every zone that could be planned passed the gate: retries and later states of this
        # policy are not gated again, even if a zone fails below (a zone refused for good must
        # not hold back a failover in the others). A zone that could not even be observed
        # escapes the gate under this policy: the price of never blocking failovers.
        self.last_policy_digest = state.policy_digest
        wrote = False
        for plan in plans:
            if plan.conflicts and plan.empty:
                for c in plan.conflicts:
                    self.log.warning("publish: %s", c)
            try:
                result = await self.apply(plan, dry_run=False, force=same_policy)
            except PartialApplyError as exc:
                applied.extend(exc.applied)
                failed.update(exc.failed)
                errors.append(exc)
                wrote = wrote or bool(exc.applied)
                continue
            except ProviderError as exc:
                failed[f"zone {plan.zone}"] = _reason(exc)
                errors.append(exc)
                continue
            applied.append(f"zone {plan.zone}")
            wrote = wrote or result.changes > 0
        if not errors:
            return wrote
        if len(errors) == 1 and not applied and not isinstance(errors[0], PartialApplyError):
            raise errors[0]
        temporary = all(
            e.temporary if isinstance(e, PartialApplyError) else isinstance(e, TemporaryProviderError) for e in errors
        )
        partial = PartialApplyError(applied, failed, temporary=temporary)
        self.log.warning("publish: %s", partial)
        raise self.context(partial, "publish") from errors[0]


def _reason(exc: ProviderError) -> str:
    """Why a unit failed, without the provider's name: ``<operation>: <detail>``."""
    return ": ".join(p for p in (exc.operation, exc.detail) if p)
