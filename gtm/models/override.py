"""Operator overrides: drain and cordon a region, stored in Redis by the CLI or HTTP API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

OverrideKind = Literal["drain", "cordon"]


class Override(BaseModel):
    """An operator's intent for one region.

    ``drain`` steps the region's weight down to 0 in planned steps and holds it there;
    ``cordon`` keeps the weight it has but never raises it. Neither ever lets weight grow.

    Attributes:
        region: region name.
        kind: ``drain`` or ``cordon``.
        reason: free text shown in status and the audit stream (required).
        actor: who asked (user name, pipeline id).
        since: unix time the override was set, seconds.
        expires_at: optional unix time after which the override no longer applies, seconds.
        force: bypass the safety rules that would hold this drain (minimum healthy regions,
            max drained, capacity headroom); set by ``gtm drain --force`` and audited.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str
    kind: OverrideKind = "drain"
    reason: str = Field(min_length=1, max_length=500)
    actor: str = "unknown"
    since: float
    expires_at: float | None = None
    force: bool = False

    def active(self, now: float) -> bool:
        """Whether the override applies at ``now`` (unix seconds)."""
        return self.expires_at is None or now < self.expires_at
