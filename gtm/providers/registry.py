"""Build providers from a policy's ``providers:`` entries (lazy imports: an SDK is only loaded
when a policy uses its provider)."""

from __future__ import annotations

import importlib
from typing import Any

from gtm.errors import ConfigError
from gtm.models.policy import Policy, ProviderConfig
from gtm.providers.base import Provider

KINDS: dict[str, str] = {
    "route53": "gtm.providers.route53:Route53Provider",
    "clouddns": "gtm.providers.clouddns:CloudDnsProvider",
    "rfc2136": "gtm.providers.rfc2136:Rfc2136Provider",
    "globalaccelerator": "gtm.providers.globalaccelerator:GlobalAcceleratorProvider",
}


def provider_class(kind: str) -> type[Provider]:
    """The class for ``kind``. Raises ``ConfigError`` for an unknown kind."""
    try:
        module, _, cls = KINDS[kind].partition(":")
    except KeyError:
        raise ConfigError([f"unknown provider kind {kind!r}; known: {sorted(KINDS)}"]) from None
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def build_provider(cfg: ProviderConfig, policy: Policy, **overrides: Any) -> Provider:
    """Instantiate one provider.

    Raises:
        ConfigError: unknown kind, options the provider does not take or invalid option values
            (named with the provider and the option).
    """
    cls = provider_class(cfg.kind)
    zones = cfg.zones or tuple(z.name for z in policy.zones)
    kwargs = {**cfg.options, **overrides}
    try:
        return cls(cfg.name, owner_id=policy.owner_id, zones=zones,
                   max_change_fraction=cfg.max_change_fraction, **kwargs)
    except (TypeError, ValueError) as exc:  # ValueError: pydantic's, for settings gtm models
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError([f"provider {cfg.name!r} ({cfg.kind}): {exc}"]) from exc


def build_providers(policy: Policy) -> list[Provider]:
    """Every record-holding provider of the policy (``embedded`` entries are skipped)."""
    return [build_provider(p, policy) for p in policy.providers if p.kind != "embedded"]
