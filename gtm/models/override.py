"""Operator overrides: drain, cordon or fail over a region, stored in Redis by the CLI, the HTTP
API or a drill (``gtm drill``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

OverrideKind = Literal["drain", "cordon", "failover"]


class Override(BaseModel):
    """An operator's intent for one region.

    ``drain`` steps the region's weight down to 0 in planned steps and holds it there;
    ``cordon`` keeps the weight it has but never raises it. Neither ever lets weight grow.
    ``failover`` (written only by ``gtm drill failover``) makes the engine treat the region
    exactly as an unhealthy one: a failure move, immediate, DNS and anycast alike; it always
    carries an expiry (the drill's dead man's switch) and the drill's id.

    Attributes:
        region: region name.
        kind: ``drain``, ``cordon`` or ``failover``.
        reason: free text shown in status and the audit stream (required).
        actor: who asked (user name, pipeline id).
        since: unix time the override was set, seconds.
        expires_at: optional unix time after which the override no longer applies, seconds.
        force: bypass the safety rules that would hold this drain (minimum healthy regions,
            max drained, capacity headroom); set by ``gtm drain --force`` and audited.
        drill: the id of the drill that wrote it (``gtm drill``), or None.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str
    kind: OverrideKind = "drain"
    reason: str = Field(min_length=1, max_length=500)
    actor: str = "unknown"
    since: float
    expires_at: float | None = None
    force: bool = False
    drill: str | None = Field(default=None, max_length=64)

    def active(self, now: float) -> bool:
        """Whether the override applies at ``now`` (unix seconds)."""
        return self.expires_at is None or now < self.expires_at
