"""Audit entries: one typed record of every change gtm makes or is asked to make.

Stored in the ``gtm:{ns}:audit`` stream (``Store.append_audit``) as flat fields: strings as
they are, everything else JSON-encoded, absent values left out. ``gtm audit`` reads them back
with :meth:`AuditEntry.from_fields`; entries written by older versions (the same flat fields)
read back the same way.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Via = Literal["cli", "api", "controller", "drill", ""]


class AuditDecision(BaseModel):
    """One decision of a plan or a rollout step: ``subject`` (``pool default/eu-west-1``,
    ``rollout r1 eu-west-1``), ``action`` (``weight 40 -> 20``, ``canary``) and ``reason``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    subject: str
    action: str
    reason: str = ""


class AuditEntry(BaseModel):
    """What changed, why, who asked, under which policy and which leader.

    Attributes:
        ts: when, unix seconds.
        action: what: ``drain``, ``drain --force``, ``cordon``, ``undrain``, ``undamp``,
            ``drain expired``, ``policy rejected``, ``rollout pause r1``; empty for a routing
            plan (then ``generation`` and ``decisions`` say what changed).
        reason: why, as the operator or the engine gave it.
        actor: who (an operator's name, a pipeline id; ``controller`` for the engine's own).
        via: the path it came in by: ``cli``, ``api``, ``controller``, ``drill``.
        region: the region acted on, if one.
        policy_digest / policy_commit: the policy in force for the actor (sha256 digest; Git
            commit when the policy comes from Git).
        fencing_token: the leader's fencing token for a controller's write; None for an
            operator's (their writes are not fenced: the controller reads them).
        generation: the routing generation a plan entry records.
        held: whether static stability held that plan.
        decisions: the plan's or rollout step's decisions.
        rollout / step: the rollout and its step number for a rollout step.
        expires_at: unix seconds an override lifts itself, if set.
        overridden_safety: the safety holds a forced drain overrode.
        lifted: the override an undrain (or expiry) removed, as stored.
        replaces: the override a drain replaced, as stored.
        damped_until: unix seconds a cleared flap-damping penalty would have ended.
        note: anything else worth a line (e.g. no projection was possible).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ts: float
    action: str = ""
    reason: str = ""
    actor: str = ""
    via: Via = ""
    region: str | None = None
    policy_digest: str = ""
    policy_commit: str = ""
    fencing_token: int | None = None
    generation: int | None = None
    held: bool | None = None
    decisions: list[AuditDecision] = Field(default_factory=list)
    rollout: str | None = None
    step: int | None = None
    expires_at: float | None = None
    overridden_safety: list[str] = Field(default_factory=list)
    lifted: dict[str, Any] | None = None
    replaces: dict[str, Any] | None = None
    damped_until: float | None = None
    note: str = ""

    def to_fields(self) -> dict[str, str]:
        """The stream fields: strings verbatim, other values JSON; empty values left out."""
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None or value == "" or value == []:
                continue
            out[name] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        return out

    def summary(self) -> str:
        """One line for a log: ``drain eu-west-1 by alice via cli: GPU driver upgrade``, or for
        a plan ``plan generation 42 (3 decisions) by controller via controller``."""
        what = self.action or (f"plan generation {self.generation} ({len(self.decisions)} decisions)"
                               if self.generation is not None else "entry")
        where = f" {self.region}" if self.region else ""
        who = f" by {self.actor}" if self.actor else ""
        via = f" via {self.via}" if self.via else ""
        why = f": {self.reason}" if self.reason else ""
        return f"{what}{where}{who}{via}{why}"

    def log_fields(self) -> dict[str, Any]:
        """The fields a log line carries (``gtm.log.CONTEXT_FIELDS`` names; empty ones left
        out), for ``logger.info(entry.summary(), extra=entry.log_fields())``."""
        names = ("region", "action", "actor", "reason", "via", "generation", "fencing_token", "policy_digest",
                 "policy_commit", "expires_at", "rollout", "step", "held", "note")
        return {n: v for n in names if (v := getattr(self, n)) is not None and v != ""}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> AuditEntry:
        """Read stream fields back. Unknown fields (from a newer or older gtm) are dropped;
        values that do not parse as JSON are kept as text.

        Raises:
            ValueError: the fields do not make an entry (no ``ts``, a field of the wrong type).
        """
        known = cls.model_fields
        data: dict[str, Any] = {}
        for name, raw in fields.items():
            if name not in known:
                continue
            if known[name].annotation is str or name == "via":
                data[name] = raw
                continue
            try:
                data[name] = json.loads(raw)
            except ValueError:
                data[name] = raw
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(f"not an audit entry: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
