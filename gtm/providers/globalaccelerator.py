"""AWS Global Accelerator: the plan's shares become endpoint groups' traffic dials and endpoint weights.

What is steered: one standard accelerator's listener, with one **endpoint group per region**
(created outside gtm, by terraform). gtm sets, per endpoint group, its
``TrafficDialPercentage`` and the ``Weight`` of the endpoints it is configured with; it never
creates or deletes endpoint groups or endpoints, nor touches health checks or port overrides.

Mapping (``render``, pure). The accelerator fronts one service; the dials follow one pool of it
(the ``segment`` setting, default the catch-all segment). For each region behind the
accelerator, with ``w`` its weight in that pool (0-255) and ``top`` the largest weight among
the regions behind the accelerator:

- **traffic dial** = ``round(100 * w / top)`` percent, at least 1 while ``w > 0``: a region at
  the largest share keeps all the traffic Global Accelerator sends it by proximity (100), a
  region at half that share keeps half of it and the rest goes to the next closest groups, a
  drained, failed or unknown region keeps none (0). Dials are relative, not global shares:
  Global Accelerator first picks the endpoint group closest to the client, then the dial sheds
  that fraction to other groups.
- **endpoint weight** = the endpoint's in-service weight (``endpoint_weight``, 128 by default,
  or its own) while ``w > 0``, and **0** when ``w == 0``. The 0 is always sent explicitly (an
  endpoint sent without ``Weight`` gets 128) and it matters: when a group has no healthy
  endpoint of weight > 0, Global Accelerator fails over to other groups *ignoring their
  dials*, so a region at dial 0 whose endpoints kept their weight would still take failover
  traffic.

What Global Accelerator cannot express goes through ``supports_warn_or_except`` (strict by
default: ``PermanentProviderError``, nothing written, the routing in force is kept):

- a **residency-pinned segment** whose pool does not hold every region behind the accelerator
  (Global Accelerator routes by proximity and dial, never by client location, so pinned clients
  could reach a region outside their jurisdiction);
- a **dark pool**: with every dial and weight at 0, Global Accelerator fails open to a random
  endpoint of the closest group rather than refusing traffic.

Observing (``observe``): ``ListEndpointGroups`` on the listener (paginated, 100 a page), one
call for every group. An endpoint group is shown to the shared planning code as one
``RecordSet`` of type ``ENDPOINT_GROUP``: ``name`` = its ARN, ``set_identifier`` = the region,
``weight`` = the dial (rounded; ``gtm plan --providers`` prints it as "weight"), ``values`` =
``dial=<percent>`` then ``<endpoint id>=<weight>`` for the endpoints gtm sets. Endpoints of a
group that are not in gtm's settings are foreign: kept at their weight in every request and
reported as conflicts. Configured endpoints missing from their group, and configured groups
missing from the listener, are reported and never created; a missing group also makes
``publish`` fail after the other groups were updated, so ``gtm status`` shows it.

Applying (``_apply``): one ``UpdateEndpointGroup`` per endpoint group that changed, none when
nothing changed. It always carries ``TrafficDialPercentage``; it carries
``EndpointConfigurations`` only when a weight changes, because that list *replaces* the group's
endpoints: it then lists every endpoint of the group as observed (foreign ones unchanged), each
with ``EndpointId``, ``Weight`` and, where the group reported it, ``ClientIPPreservationEnabled``.
(Global Accelerator has no conditional update: an endpoint added by hand between the observe
and the update would be dropped by it.) A failed group does not stop the others; the error
names the groups that failed and how many were applied. Throttling (``ThrottlingException``) and
5xx are retried inside botocore by its retry mode (``standard`` or ``adaptive``, ``max_attempts``);
what is still failing after that is a ``TemporaryProviderError``, and the provider worker
retries the next cycle, sending only the groups still out of line.

API calls made (the IAM policy needs exactly these): ``globalaccelerator:ListEndpointGroups``
(on the listener) and ``globalaccelerator:UpdateEndpointGroup`` (on the endpoint groups),
against the API in ``us-west-2``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
)

from gtm.errors import PermanentProviderError, ProviderError, TemporaryProviderError
from gtm.models.accelerator import GlobalAcceleratorSettings
from gtm.models.plan import DesiredState, PoolPlan, SegmentRoute, ServicePlan
from gtm.providers.base import ApplyResult, Provider
from gtm.providers.records import Observed, Plan, RecordSet, diff

ENDPOINT_GROUP = "ENDPOINT_GROUP"
"""``RecordSet.rdtype`` of an endpoint group's dial and weights."""

FOREIGN_ENDPOINTS = "ENDPOINT"
"""``RecordSet.rdtype`` of a group's endpoints that gtm does not set (``Observed.foreign``)."""

MISSING_GROUP = "endpoint group not found"
"""Words in the conflict reported for a configured endpoint group the listener does not hold."""

_TEMPORARY_CODES = frozenset({
    "ThrottlingException", "Throttling", "TooManyRequestsException", "InternalServiceErrorException",
    "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException",
})
_PERMANENT_BOTOCORE = (NoCredentialsError, PartialCredentialsError, NoRegionError, ParamValidationError)


@dataclass(frozen=True, slots=True)
class GroupSetting:
    """What one endpoint group holds (observed) or should hold (rendered).

    Attributes:
        region: the gtm region the group serves.
        arn: the endpoint group's ARN.
        dial: traffic dial, percent 0-100.
        weights: (endpoint id, weight 0-255) for the endpoints gtm sets, sorted by id.
        reason: why (rendered settings only; the pool member's reason).
    """

    region: str
    arn: str
    dial: float
    weights: tuple[tuple[str, int], ...]
    reason: str = ""

    def to_record(self) -> RecordSet:
        """The form the shared planning code diffs (see the module doc)."""
        return RecordSet(
            name=self.arn, rdtype=ENDPOINT_GROUP, ttl=0, set_identifier=self.region,
            weight=math.floor(self.dial + 0.5),
            values=(f"dial={self.dial:g}", *(f"{ep}={w}" for ep, w in self.weights)),
        )

    @classmethod
    def from_record(cls, rs: RecordSet) -> GroupSetting:
        """Inverse of ``to_record``."""
        head, *endpoints = rs.values
        weights = [(ep, int(w)) for ep, _, w in (v.rpartition("=") for v in endpoints)]
        return cls(region=rs.set_identifier or "", arn=rs.name, dial=float(head.removeprefix("dial=")),
                   weights=tuple(sorted(weights)))


def traffic_dial(weight: int, top: int) -> int:
    """The traffic dial (percent, 0-100) of a region at ``weight`` when the largest weight among
    the regions behind the accelerator is ``top``: 0 at weight 0, else at least 1."""
    if weight <= 0 or top <= 0:
        return 0
    return max(1, min(100, math.floor(100 * weight / top + 0.5)))


class GlobalAcceleratorProvider(Provider):
    """Global Accelerator through boto3 (every call in a worker thread).

    Args:
        name, owner_id, max_change_fraction: see ``Provider`` (``max_change_fraction`` is
            accepted for uniformity and never refuses: a plan here only moves dials and
            weights of existing groups and endpoints).
        zones: ignored (an accelerator has no DNS zone); the registry passes the policy's.
        **settings: ``GlobalAcceleratorSettings`` fields (``listener_arn``, ``service``,
            ``endpoint_groups``, ``segment``, ``endpoint_weight``, ``region_name``,
            ``endpoint_url``, ``retry_mode``, ``max_attempts``, ``strict``).

    Raises:
        pydantic.ValidationError (a ``ValueError``): invalid settings.

    Credentials come only from boto3's standard chain; whether they were found is logged,
    never their values.
    """

    SUPPORTS: ClassVar[frozenset[str]] = frozenset({"WEIGHTED"})
    KIND: ClassVar[str] = "globalaccelerator"

    def __init__(
        self,
        name: str,
        *,
        owner_id: str,
        zones: Sequence[str] = (),
        max_change_fraction: float = 0.5,
        **settings: Any,
    ) -> None:
        self.settings = GlobalAcceleratorSettings.model_validate(settings)
        super().__init__(
            name, owner_id=owner_id, zones=(), max_change_fraction=max_change_fraction, strict=self.settings.strict,
        )
        self.in_service = self.settings.weights_in_service()
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._calls = 0
        self._raw: dict[str, dict[str, Any]] = {}  # endpoint group ARN → as last listed

    @property
    def listener_arn(self) -> str:
        return self.settings.listener_arn

    @property
    def api_calls(self) -> int:
        """API calls made so far (each logical call once; botocore's retries not counted)."""
        return self._calls

    # -- client and error mapping ----------------------------------------------------------------

    @property
    def server_text(self) -> str:
        """``endpoint_url``, else Global Accelerator's API endpoint (in us-west-2)."""
        return self.settings.endpoint_url or "https://globalaccelerator.us-west-2.amazonaws.com"

    async def client(self) -> Any:
        """The boto3 Global Accelerator client, created on first use (in a worker thread)."""
        async with self._client_lock:
            if self._client is None:
                self._client = await asyncio.to_thread(self._make_client)
        return self._client

    def _make_client(self) -> Any:
        s = self.settings
        session = boto3.session.Session(region_name=s.region_name)
        creds = session.get_credentials()
        self.log.info(
            "client: endpoint %s, region %s, credentials %s, retries %s x%d",
            s.endpoint_url or "default", s.region_name,
            f"set (from {creds.method})" if creds is not None else "NOT set", s.retry_mode, s.max_attempts,
        )
        return session.client(
            "globalaccelerator",
            endpoint_url=s.endpoint_url,
            config=Config(
                retries={"mode": s.retry_mode, "max_attempts": s.max_attempts},
                connect_timeout=10, read_timeout=30, user_agent_extra="gtm",
            ),
        )

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        client = await self.client()
        self._calls += 1
        try:
            result: dict[str, Any] = await asyncio.to_thread(getattr(client, operation), **params)
        except (ClientError, BotoCoreError) as exc:
            raise _map_error(self.name, operation, exc) from exc
        return result

    # -- render (pure) ---------------------------------------------------------------------------

    def zones_of(self, state: DesiredState) -> list[str]:
        """The one "zone" of this provider: its listener."""
        return [self.listener_arn]

    def render(self, state: DesiredState, zone: str = "") -> list[RecordSet]:
        """One ``ENDPOINT_GROUP`` record per configured region (see the module doc); ``zone`` is
        ignored.

        Raises:
            PermanentProviderError: the service or segment is not in ``state``, or (when strict)
                what the accelerator cannot express: a residency pin it would break, a dark pool.
        """
        return [g.to_record() for g in self.group_settings(state)]

    def group_settings(self, state: DesiredState) -> list[GroupSetting]:
        """The desired setting of every configured endpoint group, by region (pure)."""
        svc = self._service(state)
        route = self._route(svc)
        pool = state.pools.get(route.pool_id)
        self._check_residency(state, svc)
        regions = sorted(self.in_service)
        members = {m.region: m for m in pool.members} if pool is not None else {}
        if pool is None or not any(members[r].weight > 0 for r in regions if r in members):
            self.supports_warn_or_except(
                f"{svc.fqdn}: pool {route.pool_id} has no region behind the accelerator in service; Global "
                "Accelerator cannot go dark (with every dial and weight at 0 it fails open to the closest "
                "endpoint group), so the dials in force are kept"
            )
        top = max((members[r].weight for r in regions if r in members), default=0)
        out = []
        for region in regions:
            m = members.get(region)
            weight = m.weight if m is not None else 0
            reason = m.reason if m is not None else f"not a member of pool {route.pool_id}"
            eps = self.in_service[region]
            out.append(GroupSetting(
                region=region, arn=self.settings.endpoint_groups[region].arn,
                dial=float(traffic_dial(weight, top)),
                weights=tuple(sorted((ep, w if weight > 0 else 0) for ep, w in eps.items())),
                reason=reason,
            ))
        return out

    def _service(self, state: DesiredState) -> ServicePlan:
        want = self.settings.service
        for fqdn, svc in state.services.items():
            if want in (svc.name, fqdn):
                return svc
        raise PermanentProviderError(f"{self.name}: service {want!r} is not in the plan")

    def _route(self, svc: ServicePlan) -> SegmentRoute:
        routes = svc.segments
        if self.settings.segment is not None:
            picked = [r for r in routes if r.segment == self.settings.segment]
        else:
            picked = [r for r in routes if r.is_default] or (list(routes) if len(routes) == 1 else [])
        if not picked:
            raise PermanentProviderError(
                f"{self.name}: {svc.fqdn} has no segment {self.settings.segment or '(catch-all)'} in the plan; "
                f"name one with the 'segment' setting ({', '.join(r.segment for r in routes)})"
            )
        return picked[0]

    def _check_residency(self, state: DesiredState, svc: ServicePlan) -> None:
        behind = set(self.in_service)
        for r in svc.segments:
            if not r.jurisdictions:
                continue
            pool: PoolPlan | None = state.pools.get(r.pool_id)
            allowed = {m.region for m in pool.members} if pool is not None else set()
            outside = sorted(behind - allowed)
            if outside:
                self.supports_warn_or_except(
                    f"{svc.fqdn}: segment {r.segment} is pinned to {'/'.join(r.jurisdictions)}, but the accelerator "
                    f"also fronts {', '.join(outside)}; Global Accelerator routes by proximity and dial, never by "
                    "client location, so it cannot keep those clients in their jurisdiction"
                )

    # -- observe ---------------------------------------------------------------------------------

    async def observe(self, zone: str = "", managed_names: Sequence[str] = ()) -> Observed:
        """List the listener's endpoint groups (``ListEndpointGroups``, paginated); ``zone`` and
        ``managed_names`` are ignored.

        Returns:
            ``owned``: an ``ENDPOINT_GROUP`` record per configured group found, with only the
            configured endpoints it holds; ``foreign``: per group, its other endpoints.

        Raises:
            ProviderError: the API failed (``TemporaryProviderError`` for throttling and 5xx).
        """
        raw: dict[str, dict[str, Any]] = {}
        params: dict[str, Any] = {"ListenerArn": self.listener_arn, "MaxResults": 100}
        seen: set[str] = set()
        while True:
            resp = await self._call("list_endpoint_groups", **params)
            for g in resp.get("EndpointGroups", []):
                raw[g["EndpointGroupArn"]] = g
            token = resp.get("NextToken")
            if not token:
                break
            if token in seen:
                raise PermanentProviderError(f"{self.name}: listing {self.listener_arn} does not advance")
            seen.add(token)
            params["NextToken"] = token
        self._raw = raw
        owned, foreign = [], []
        for region, cfg in sorted(self.settings.endpoint_groups.items()):
            g = raw.get(cfg.arn)
            if g is None:
                continue
            descs = g.get("EndpointDescriptions", [])
            ours = [d for d in descs if d["EndpointId"] in cfg.endpoints]
            others = sorted(f"{d['EndpointId']}={d.get('Weight', 128)}" for d in descs if d not in ours)
            weights = tuple(sorted((d["EndpointId"], int(d.get("Weight", 128))) for d in ours))
            dial = float(g.get("TrafficDialPercentage", 100.0))
            owned.append(GroupSetting(region, cfg.arn, dial, weights).to_record())
            if others:
                foreign.append(RecordSet(name=cfg.arn, rdtype=FOREIGN_ENDPOINTS, ttl=0, values=tuple(others),
                                         set_identifier=region))
        return Observed(zone=self.listener_arn, owned=tuple(owned), foreign=tuple(foreign))

    # -- plan (pure) -----------------------------------------------------------------------------

    async def plan_state(self, state: DesiredState) -> list[Plan]:
        """Render, observe and plan (no write): one plan, for the listener."""
        desired = self.render(state)
        return [self.plan(desired, await self.observe())]

    def plan(self, desired: Sequence[RecordSet], observed: Observed) -> Plan:
        """An update per endpoint group whose dial or weights differ (pure).

        Only groups and endpoints that exist are planned: a configured group the listener does
        not hold, or a configured endpoint its group does not hold, is a conflict (never
        created); endpoints of a group that gtm does not set are conflicts too (kept as they are).
        """
        have = {rs.key: rs for rs in observed.owned}
        keep: list[RecordSet] = []
        conflicts: list[str] = []
        for rs in desired:
            old = have.get(rs.key)
            want = GroupSetting.from_record(rs)
            if old is None:
                conflicts.append(f"{want.region}: {MISSING_GROUP} under the listener: {want.arn}; not changed")
                continue
            present = {ep for ep, _ in GroupSetting.from_record(old).weights}
            missing = [ep for ep, _ in want.weights if ep not in present]
            if missing:
                conflicts.append(f"{want.region}: endpoints {', '.join(missing)} are not in endpoint group {want.arn}; "
                                 "not added (gtm only sets weights)")
            existing = tuple(w for w in want.weights if w[0] in present)
            keep.append(dataclasses.replace(want, weights=existing).to_record())
        for rs in observed.foreign:
            conflicts.append(f"{rs.set_identifier}: endpoints {', '.join(rs.values)} of {rs.name} are not in gtm's "
                             "settings; kept at their weights")
        plan = diff(self.name, observed.zone, keep, observed)
        return dataclasses.replace(plan, conflicts=tuple(sorted(set(conflicts))))

    # -- apply -----------------------------------------------------------------------------------

    async def apply(self, plan: Plan, *, dry_run: bool = True, force: bool = False) -> ApplyResult:
        """``Provider.apply`` without the unsafe-plan gate: a plan here only moves the dials and
        weights of groups and endpoints that exist (nothing is deleted or rewritten).

        Raises:
            ProviderError: some endpoint groups could not be updated (the others were).
        """
        return await super().apply(plan, dry_run=dry_run, force=True)

    async def _apply(self, plan: Plan) -> int:
        start = self._calls
        failed: list[tuple[str, ProviderError]] = []
        for change in plan.changes:
            if change.action != "update" or change.old is None or change.new is None:
                raise PermanentProviderError(f"{self.name}: cannot {change.action} {change.record.name}: "
                                             "gtm only updates existing endpoint groups")
            old, new = GroupSetting.from_record(change.old), GroupSetting.from_record(change.new)
            params: dict[str, Any] = {"EndpointGroupArn": new.arn, "TrafficDialPercentage": new.dial}
            if old.weights != new.weights:
                params["EndpointConfigurations"] = self.endpoint_configurations(new)
            try:
                await self._call("update_endpoint_group", **params)
            except ProviderError as exc:
                failed.append((new.region, exc))
                continue
            self.log.info("apply: %s dial %g%% (was %g%%), weights %s", new.region, new.dial, old.dial,
                          ", ".join(f"{ep}={w}" for ep, w in new.weights))
        self._raw = {}  # stale now; the next observe refills it
        if failed:
            done = len(plan.changes) - len(failed)
            msg = (f"{self.name}: {len(failed)} of {len(plan.changes)} endpoint group update(s) failed, "
                   f"{done} applied: " + "; ".join(f"{region}: {exc}" for region, exc in failed))
            temporary = [e for _, e in failed if isinstance(e, TemporaryProviderError)]
            if len(temporary) == len(failed):
                raise TemporaryProviderError(msg, delay=max(e.delay for e in temporary))
            raise PermanentProviderError(msg)
        return self._calls - start

    def endpoint_configurations(self, new: GroupSetting) -> list[dict[str, Any]]:
        """The ``EndpointConfigurations`` of an update: every endpoint of the group as last
        observed, gtm's at their new weight, others unchanged, with ``ClientIPPreservationEnabled``
        where the group reported it.

        Raises:
            PermanentProviderError: the group was not observed first.
        """
        group = self._raw.get(new.arn)
        if group is None:
            raise PermanentProviderError(f"{self.name}: endpoint group {new.arn} was not observed before applying")
        weights = dict(new.weights)
        out = []
        for d in group.get("EndpointDescriptions", []):
            ep = d["EndpointId"]
            item: dict[str, Any] = {"EndpointId": ep, "Weight": weights.get(ep, int(d.get("Weight", 128)))}
            if "ClientIPPreservationEnabled" in d:
                item["ClientIPPreservationEnabled"] = d["ClientIPPreservationEnabled"]
            out.append(item)
        return out

    async def publish(self, state: DesiredState) -> bool:
        """Plan and apply; True if anything was written.

        Raises:
            ProviderError: an update failed, or a configured endpoint group is missing from the
                listener (raised after the other groups were updated).
        """
        wrote = False
        missing: list[str] = []
        for plan in await self.plan_state(state):
            for c in plan.conflicts:
                self.log.warning("publish: %s", c)
            missing.extend(c for c in plan.conflicts if MISSING_GROUP in c)
            result = await self.apply(plan, dry_run=False)
            wrote = wrote or result.changes > 0
        self.last_policy_digest = state.policy_digest
        if missing:
            raise PermanentProviderError(f"{self.name}: " + "; ".join(missing))
        return wrote


def _map_error(provider: str, operation: str, exc: ClientError | BotoCoreError) -> ProviderError:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        msg = f"{provider}: {operation}: {code}: {err.get('Message', '')}"
        if code in _TEMPORARY_CODES or status >= 500:
            return TemporaryProviderError(msg, delay=5.0 if "Throttl" in code else 1.0)
        return PermanentProviderError(msg)
    msg = f"{provider}: {operation}: {type(exc).__name__}: {exc}"
    if isinstance(exc, _PERMANENT_BOTOCORE):
        return PermanentProviderError(msg)
    return TemporaryProviderError(msg)
