"""The policy in force, as a JSON snapshot the leader keeps in Redis.

A controller that starts (a restart, a standby, a new leader) while its own policy files or
Git commit do not validate would otherwise refuse to start: during a bad edit the fleet could
lose every controller but the one already running. With the snapshot it starts from the policy
the leader last ran, says so loudly, and keeps retrying its own files (``Controller`` keeps the
last good policy until they validate).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from gtm.config.loader import Config, cross_check, policy_digest
from gtm.errors import ConfigError
from gtm.models.policy import Policy
from gtm.models.region import Inventory


def dump_snapshot(cfg: Config, written_at: float) -> str:
    """``cfg`` as snapshot JSON: policy, inventory, digest, source, when (unix seconds)."""
    return json.dumps({
        "digest": cfg.digest, "source": cfg.source, "written_at": written_at,
        "policy": cfg.policy.model_dump(mode="json"), "inventory": cfg.inventory.model_dump(mode="json"),
    }, sort_keys=True)


def load_snapshot(text: str) -> tuple[Config, float]:
    """A snapshot back as ``(Config, written_at)``, validated again and its digest checked.

    Raises:
        ConfigError: not a snapshot, no longer valid (e.g. written by another gtm version), or
            its digest does not match its content.
    """
    try:
        doc: dict[str, Any] = json.loads(text)
        policy = Policy.model_validate(doc["policy"])
        inventory = Inventory.model_validate(doc["inventory"])
        written_at = float(doc.get("written_at", 0.0))
        claimed, source = str(doc["digest"]), str(doc.get("source", ""))
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise ConfigError([f"policy snapshot in Redis is unusable: {str(exc).splitlines()[0]}"]) from exc
    problems = cross_check(policy, inventory)
    if problems:
        raise ConfigError([f"policy snapshot in Redis: {p}" for p in problems])
    digest = policy_digest(policy, inventory)
    if digest != claimed:
        raise ConfigError([f"policy snapshot in Redis: digest {claimed[:19]} does not match its content "
                           f"({digest[:19]}); written by another gtm version?"])
    return Config(policy=policy, inventory=inventory, digest=digest, files=(), source=source), written_at
