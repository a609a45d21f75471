"""Settings of a ``kind: globalaccelerator`` provider (AWS Global Accelerator), validated with the
policy so ``gtm policy validate`` reports a wrong ARN or an unknown region with its field path.

The accelerator, its listener and one endpoint group per region are created outside gtm
(terraform); gtm only sets each endpoint group's traffic dial and its endpoints' weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ARN_HEAD = r"arn:aws[a-z-]*:globalaccelerator::\d{12}:accelerator/[A-Za-z0-9-]+"
LISTENER_ARN = re.compile(rf"^{_ARN_HEAD}/listener/[A-Za-z0-9-]+$")
"""A standard accelerator's listener ARN."""

ENDPOINT_GROUP_ARN = re.compile(rf"^{_ARN_HEAD}/listener/[A-Za-z0-9-]+/endpoint-group/[A-Za-z0-9-]+$")
"""An endpoint group's ARN (it starts with its listener's ARN)."""

EndpointWeight = Annotated[int, Field(ge=1, le=255, strict=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EndpointGroupSettings(_Strict):
    """One region's endpoint group.

    Attributes:
        arn: the endpoint group's ARN (under ``listener_arn``).
        endpoints: the endpoints gtm sets the weight of: their ids (ALB/NLB ARNs, EIP
            allocation ids, EC2 instance ids) as a list, each then weighted
            ``endpoint_weight`` while the region is in service; or a mapping id → in-service
            weight (1-255). Out of service, every one of them gets weight 0. Other endpoints
            of the group are kept as they are.
    """

    arn: str
    endpoints: dict[str, EndpointWeight | None] = Field(min_length=1, max_length=10)

    @field_validator("arn")
    @classmethod
    def _arn(cls, v: str) -> str:
        if not ENDPOINT_GROUP_ARN.match(v):
            raise ValueError(
                f"{v!r} is not an endpoint group ARN "
                "(arn:aws:globalaccelerator::<account>:accelerator/<id>/listener/<id>/endpoint-group/<id>)"
            )
        return v

    @field_validator("endpoints", mode="before")
    @classmethod
    def _endpoints(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            if len(set(v)) != len(v):
                raise ValueError(f"endpoint ids repeat: {sorted({e for e in v if v.count(e) > 1})}")
            return dict.fromkeys(v)
        return v

    @field_validator("endpoints")
    @classmethod
    def _ids(cls, v: dict[str, int | None]) -> dict[str, int | None]:
        for ep in v:
            if not ep or len(ep) > 255 or any(c.isspace() or not c.isprintable() for c in ep):
                raise ValueError(f"endpoint id {ep!r} is empty, too long or has spaces or control characters")
        return v


class GlobalAcceleratorSettings(_Strict):
    """The ``options`` of a ``kind: globalaccelerator`` provider.

    Attributes:
        listener_arn: the accelerator's listener whose endpoint groups gtm steers.
        service: the policy service (name or fqdn) the accelerator fronts.
        segment: the segment of that service whose pool the dials follow (default: the
            service's catch-all segment, or its only segment).
        endpoint_groups: region → its endpoint group (one per region of the service that
            sits behind the accelerator).
        endpoint_weight: weight (1-255) of an in-service endpoint listed without its own
            weight (128 is AWS's default).
        region_name: the Global Accelerator API's region (its control plane is in us-west-2).
        endpoint_url: API endpoint override (tests).
        retry_mode: botocore retry mode, ``standard`` or ``adaptive`` (throttling and 5xx are
            retried with backoff inside botocore).
        max_attempts: botocore's ``max_attempts`` (retries after the first attempt).
        strict: refuse (``PermanentProviderError``) what the accelerator cannot express (a
            residency-pinned segment, a dark pool) instead of degrading with a warning.
    """

    listener_arn: str
    service: str = Field(min_length=1)
    segment: str | None = None
    endpoint_groups: dict[str, EndpointGroupSettings] = Field(min_length=1)
    endpoint_weight: EndpointWeight = 128
    region_name: str = "us-west-2"
    endpoint_url: str | None = None
    retry_mode: Literal["standard", "adaptive"] = "standard"
    max_attempts: int = Field(default=8, ge=0, le=20, strict=True)
    strict: bool = True

    @field_validator("listener_arn")
    @classmethod
    def _listener(cls, v: str) -> str:
        if not LISTENER_ARN.match(v):
            raise ValueError(
                f"{v!r} is not a listener ARN (arn:aws:globalaccelerator::<account>:accelerator/<id>/listener/<id>)"
            )
        return v

    @model_validator(mode="after")
    def _groups_under_listener(self) -> GlobalAcceleratorSettings:
        errors = []
        arns: dict[str, str] = {}
        for region, group in sorted(self.endpoint_groups.items()):
            if not group.arn.startswith(self.listener_arn + "/endpoint-group/"):
                errors.append(f"endpoint group of {region} ({group.arn}) is not under listener {self.listener_arn}")
            if group.arn in arns:
                errors.append(f"{region} and {arns[group.arn]} name the same endpoint group {group.arn}")
            arns[group.arn] = region
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def weights_in_service(self) -> dict[str, dict[str, int]]:
        """Region → endpoint id → the endpoint's weight while the region is in service."""
        return {
            region: {ep: (w if w is not None else self.endpoint_weight) for ep, w in g.endpoints.items()}
            for region, g in self.endpoint_groups.items()
        }


ServiceShape = tuple[str, tuple[str, ...], tuple[str, ...]]
"""A service as the cross-checks see it: (fqdn, regions, segment names)."""


def check_against_services(
    provider: str, settings: GlobalAcceleratorSettings, services: Mapping[str, ServiceShape]
) -> list[str]:
    """Cross-checks with the policy's services; one line per problem (empty when fine).

    Args:
        provider: the provider's name (for the messages).
        settings: its settings.
        services: service name → (fqdn, regions, segment names).
    """
    match = [n for n, (fqdn, _, _) in services.items() if settings.service in (n, fqdn)]
    if not match:
        return [f"provider {provider!r} fronts unknown service {settings.service!r}"]
    _, regions, segments = services[match[0]]
    out = []
    stray = sorted(set(settings.endpoint_groups) - set(regions))
    if stray:
        out.append(f"provider {provider!r}: endpoint groups for regions not serving {match[0]!r}: {stray}")
    if settings.segment is not None and settings.segment not in segments:
        out.append(f"provider {provider!r}: service {match[0]!r} has no segment {settings.segment!r}")
    return out


def provider_kind_settings(kind: str, options: Mapping[str, Any]) -> GlobalAcceleratorSettings | None:
    """The validated settings of a provider of ``kind`` whose options gtm models (None otherwise).

    Raises:
        pydantic.ValidationError (a ``ValueError``): the options are invalid.
    """
    if kind == "globalaccelerator":
        return GlobalAcceleratorSettings.model_validate(dict(options))
    return None
