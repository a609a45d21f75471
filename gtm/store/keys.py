"""Every Redis key gtm uses, in one place.

``{ns}`` is a hash tag, so one Redis Cluster slot holds one installation's keys.

| key | type | holds |
| --- | --- | --- |
| ``gtm:{ns}:report:<region>`` | string (JSON), EX = report TTL | latest FleetReport |
| ``gtm:{ns}:vantage:<region>`` | string (JSON), EX = report TTL | VantageReport: its probes of the others |
| ``gtm:{ns}:bgp:<region>`` | string (JSON), PX = BGP state TTL | BgpState: what the agent sent, what ExaBGP acked |
| ``gtm:{ns}:reports`` | stream, MAXLEN ~ | report history (state changes only) |
| ``gtm:{ns}:override:<region>`` | string (JSON) | drain / cordon |
| ``gtm:{ns}:desired`` | string (JSON) | last DesiredState with its generation |
| ``gtm:{ns}:applied:<provider>`` | string (JSON) | generation and digest last applied |
| ``gtm:{ns}:leader`` / ``gtm:{ns}:epoch`` | SET NX PX / INCR | leader lease / fencing token |
| ``gtm:{ns}:audit`` | stream, MAXLEN ~ | every change: what, why, policy digest, fencing token |
| ``gtm:{ns}:rejected`` | hash | reports rejected, field ``<region>|<reason-code>`` → count |
| ``gtm:{ns}:rejected-last`` | hash | region → digest of the last rejected payload counted |
| ``gtm:{ns}:rollout:<name>`` | string (JSON) | rollout state machine (``gtm.engine.rollout``) |
| ``gtm:{ns}:drill`` | string (JSON), PX = drill lease | DrillLock: the one drill running (``gtm drill``) |
| ``gtm:{ns}:events`` | pub/sub channel | wake-ups; polling remains the fallback |
"""

from __future__ import annotations

from dataclasses import dataclass

REPORT_STREAM_MAXLEN = 10_000
AUDIT_STREAM_MAXLEN = 100_000


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names for one installation namespace."""

    ns: str = "default"

    @property
    def prefix(self) -> str:
        return f"gtm:{{{self.ns}}}:"

    def report(self, region: str) -> str:
        return f"{self.prefix}report:{region}"

    @property
    def report_pattern(self) -> str:
        return f"{self.prefix}report:*"

    def vantage(self, region: str) -> str:
        """The VantageReport written by ``region``'s agent (its probes of the other regions)."""
        return f"{self.prefix}vantage:{region}"

    def bgp(self, region: str) -> str:
        """The BgpState written by ``region``'s agent (its BGP speaker's routes and sessions)."""
        return f"{self.prefix}bgp:{region}"

    @property
    def reports_stream(self) -> str:
        return f"{self.prefix}reports"

    def override(self, region: str) -> str:
        return f"{self.prefix}override:{region}"

    @property
    def override_pattern(self) -> str:
        return f"{self.prefix}override:*"

    @property
    def damping_cleared(self) -> str:
        """Hash: region → JSON ``{"at", "actor", "reason"}`` of the last ``gtm undamp``."""
        return f"{self.prefix}damping-cleared"

    @property
    def policy_snapshot(self) -> str:
        """JSON of the policy and inventory the leader runs (``Store.put_policy_snapshot``)."""
        return f"{self.prefix}policy-in-force"

    @property
    def desired(self) -> str:
        return f"{self.prefix}desired"

    def applied(self, provider: str) -> str:
        return f"{self.prefix}applied:{provider}"

    @property
    def leader(self) -> str:
        return f"{self.prefix}leader"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}epoch"

    @property
    def audit(self) -> str:
        return f"{self.prefix}audit"

    @property
    def rejected(self) -> str:
        return f"{self.prefix}rejected"

    @property
    def rejected_last(self) -> str:
        """Hash: region → digest of the last rejected payload counted (counted once, by any reader)."""
        return f"{self.prefix}rejected-last"

    def rollout(self, name: str) -> str:
        return f"{self.prefix}rollout:{name}"

    @property
    def drill(self) -> str:
        return f"{self.prefix}drill"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"
