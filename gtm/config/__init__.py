"""The only reader of ``regions/`` and ``policies/``; errors name file, line, field and value."""

from gtm.config.loader import (
    Config,
    load_config,
    load_inventory,
    load_policy,
    policy_digest,
)

__all__ = ["Config", "load_config", "load_inventory", "load_policy", "policy_digest"]
