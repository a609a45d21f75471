"""Failover drills (``gtm drill drain|failover|kill REGION``): the policy's ``drills:`` limits, the
drill lock held in Redis while one runs, and the records a drill keeps (every client request,
every event, a per-second series) from which its report and verdict are made.

Shared by the drill runner (``gtm.drills``), the controller's status page and the API. Pure data:
no clock, no I/O.

Units: times are unix seconds (``float``) unless a name says otherwise; latencies are
milliseconds (``*_ms``); rates and shares are fractions 0..1, never percent.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DrillKind = Literal["drain", "failover", "kill"]
"""``drain``: an ordinary drain (safety rules apply), held, then undrained. ``failover``: an
override the engine treats exactly as an unhealthy region (the fleet keeps running), with an
expiry renewed by the drill (dead man's switch). ``kill``: the simulated fleet really stops
(only for fleets gtm runs itself: ``gtm.sim``)."""

RequestOutcome = Literal["ok", "refused", "timeout", "http_error", "dns_error", "error"]
"""How one client request ended: ``ok`` (a 2xx and a well-formed answer), ``refused`` (the
connection was refused or reset), ``timeout``, ``http_error`` (a non-2xx status; see
``RequestRecord.status``), ``dns_error`` (the resolver gave no usable address), ``error``
(anything else, e.g. a malformed answer)."""

Verdict = Literal["passed", "failed", "aborted", "refused"]
"""``passed``: exit 0. ``failed``: requests lost beyond the allowance, residency broken, traffic
never moved or never came back (exit 1). ``aborted``: a limit was crossed or the operator
interrupted; the drill's change was undone (exit 1). ``refused``: preflight said no (exit 3)."""

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BlockedWindow(_Strict):
    """A weekly window in which no drill may start (e.g. a launch, peak hours).

    Attributes:
        days: weekdays the window applies to (``mon`` .. ``sun``), UTC; all seven by default.
        start / end: ``HH:MM`` in UTC; an ``end`` before ``start`` runs past midnight into the
            next day.
        reason: shown when a drill is refused.
    """

    days: tuple[Weekday, ...] = _DAYS
    start: str
    end: str
    reason: str = Field(default="", max_length=200)

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError(f"{v!r} is not a time of day as HH:MM (00:00-23:59, UTC)")
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> BlockedWindow:
        if self.start == self.end:
            raise ValueError(f"start and end are both {self.start}: the window would be empty")
        if not self.days:
            raise ValueError("days must name at least one weekday")
        return self

    def covers(self, ts: float) -> bool:
        """Whether unix time ``ts`` (seconds) falls inside the window."""
        at = _dt.datetime.fromtimestamp(ts, _dt.UTC)
        minute = at.hour * 60 + at.minute
        start, end = _minutes(self.start), _minutes(self.end)
        today = _DAYS[at.weekday()]
        yesterday = _DAYS[(at.weekday() - 1) % 7]
        if start < end:
            return today in self.days and start <= minute < end
        # Past midnight: the evening part belongs to today, the morning part to yesterday's window.
        return (today in self.days and minute >= start) or (yesterday in self.days and minute < end)

    def describe(self) -> str:
        days = "daily" if set(self.days) == set(_DAYS) else ",".join(self.days)
        why = f" ({self.reason})" if self.reason else ""
        return f"{days} {self.start}-{self.end} UTC{why}"


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


class DrillLimits(_Strict):
    """The policy's ``drills:`` section: when a running drill is aborted, what it may lose, and
    when none may start. Checked every second while a drill runs (``gtm.drills``).

    Attributes:
        max_error_rate: abort when more than this fraction (0..1) of the client requests sent
            in the last ``error_window_s`` failed (judged once at least ``min_requests`` were
            sent in the window). A ``kill`` drill is judged only after its expected error
            window (detection + TTL + ``kill_margin_s``) has passed.
        error_window_s: the sliding window for ``max_error_rate``, seconds.
        min_requests: requests needed in the window before the error rate is judged.
        max_p99_latency_ms: abort when the p99 latency of the requests of the last
            ``error_window_s`` exceeds this, milliseconds.
        max_duration_s: abort a drill that runs longer than this, seconds (hold included).
        allowed_failed_requests: a ``drain`` or ``failover`` drill passes only with at most
            this many failed requests (0: zero downtime).
        kill_margin_s: a ``kill`` drill passes when its error window is no longer than
            detection + TTL + this margin, seconds.
        lease_s: a ``failover`` override's expiry, seconds from its last renewal; the drill
            renews it every ``lease_s / 3``. A drill process that dies (SIGKILL, a lost host)
            stops renewing, and the override lifts itself at most ``lease_s`` later.
        blocked_windows: weekly windows (UTC) in which no drill starts.
    """

    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    error_window_s: float = Field(default=5.0, gt=0, le=600)
    min_requests: int = Field(default=10, ge=1, le=1_000_000)
    max_p99_latency_ms: float = Field(default=10_000.0, gt=0, le=3_600_000)
    max_duration_s: float = Field(default=900.0, gt=0, le=86_400)
    allowed_failed_requests: int = Field(default=0, ge=0)
    kill_margin_s: float = Field(default=10.0, ge=0, le=3600)
    lease_s: float = Field(default=30.0, ge=3, le=3600)
    blocked_windows: tuple[BlockedWindow, ...] = ()

    def blocked_at(self, ts: float) -> BlockedWindow | None:
        """The first blocked window covering unix time ``ts``, or None."""
        return next((w for w in self.blocked_windows if w.covers(ts)), None)


class DrillLock(_Strict):
    """The one drill running in an installation, stored under ``gtm:{ns}:drill`` with an expiry
    of ``DrillLimits.lease_s`` that the running drill renews (a dead drill's lock lapses).

    Attributes:
        id: the drill's id (``drill-<kind>-<region>-<unix seconds>``).
        kind / region: what it does, where.
        actor: who started it.
        started: unix seconds.
        phase: ``act``, ``hold``, ``restore`` (status page, API).
        expires_at: unix seconds the lock lapses unless renewed.
    """

    id: str = Field(min_length=1, max_length=64)
    kind: DrillKind
    region: str
    actor: str
    started: float
    phase: str = "act"
    expires_at: float


class RequestRecord(_Strict):
    """One client request of a drill's load.

    Attributes:
        t: when it was sent, unix seconds.
        population: the client population (e.g. ``eu``, ``us``).
        address: the address the resolver answered ("" when resolution failed).
        region: the region that address belongs to (None when unknown or unresolved).
        outcome: how it ended (``RequestOutcome``).
        status: HTTP status, when one came back.
        latency_ms: send to last byte, milliseconds (resolution not included).
        ttft_ms: send to the first streamed token, milliseconds (None when none came).
        resolve_ms: the DNS lookup through the resolver, milliseconds.
        residency_ok: False when the answer broke the population's residency (an EU client
            answered with a region outside the EU).
        detail: a short error text for failed requests.
    """

    t: float
    population: str
    address: str = ""
    region: str | None = None
    outcome: RequestOutcome
    status: int | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    resolve_ms: float = 0.0
    residency_ok: bool = True
    detail: str = Field(default="", max_length=300)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class DrillEvent(_Strict):
    """One thing that happened during a drill (a vertical line in the timeline plot).

    ``kind``: ``preflight``, ``act`` (override written, fleet killed), ``answers_moved`` (the
    authoritative answers no longer name the region), ``clients_moved`` (no client request
    reached it any more), ``restore``, ``restored`` (answers name it again), ``abort``,
    ``limit``, ``note``.
    """

    t: float
    kind: str
    text: str = ""


class SecondSample(_Strict):
    """One second of a drill (``t`` = seconds since the drill started, the window [t, t+1)).

    Attributes:
        t: seconds since start.
        ok / failed: requests sent in that second by outcome.
        p50_ms / p99_ms: latency of the requests that completed in that second (None: none).
        shares: per population, the share (0..1) of its requests answered with each region.
        answer_shares: the authoritative answers sampled in that second, share per region.
        health: each region's health state in the plan in force.
    """

    t: int
    ok: int = 0
    failed: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    shares: dict[str, dict[str, float]] = Field(default_factory=dict)
    answer_shares: dict[str, float] = Field(default_factory=dict)
    health: dict[str, str] = Field(default_factory=dict)


class DrillReport(BaseModel):
    """What a drill did and what clients saw: the JSON file, the source of the PNG and HTML.

    Attributes:
        id / kind / region / actor: the drill.
        started / ended: unix seconds.
        ttl_s: the service's TTL in force, seconds (clients may keep a cached answer this long).
        resolver: how clients resolved (``unbound 127.0.0.1:5353 (stub → …)``, ``--resolver``).
        verdict: ``passed``, ``failed``, ``aborted`` or ``refused``.
        reasons: why the verdict (empty when passed).
        answers_moved_s: act → the authoritative answers stopped naming the region, seconds.
        clients_moved_s: act → the last client request that reached the region, seconds.
        restored_s: restore → the answers name the region again, seconds.
        error_window_s: first to last failed request, seconds (0 when none failed).
        expected_window_s: for ``kill``: detection + TTL + margin, the most ``error_window_s``
            may be to pass.
        total_requests / failed_requests: client requests sent, and failed, during the drill.
        residency_violations: answers that broke a population's residency.
        plan: the preflight's plan in lines (what will happen).
        events: every event, in time order.
        series: one sample per second.
        failures: the failed requests (every one, capped at 1,000).
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: DrillKind
    region: str
    actor: str = ""
    started: float
    ended: float
    ttl_s: float = 0.0
    resolver: str = ""
    verdict: Verdict
    reasons: list[str] = Field(default_factory=list)
    answers_moved_s: float | None = None
    clients_moved_s: float | None = None
    restored_s: float | None = None
    error_window_s: float = 0.0
    expected_window_s: float | None = None
    total_requests: int = 0
    failed_requests: int = 0
    residency_violations: int = 0
    plan: list[str] = Field(default_factory=list)
    events: list[DrillEvent] = Field(default_factory=list)
    series: list[SecondSample] = Field(default_factory=list)
    failures: list[RequestRecord] = Field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 passed, 1 failed or aborted, 3 refused."""
        return {"passed": 0, "failed": 1, "aborted": 1, "refused": 3}[self.verdict]

    def verdict_line(self) -> str:
        """One line, e.g. ``drain eu-west-1: traffic left in 6.2 s (answers) / 31.0 s (clients,
        TTL 30); 0 of 18,240 requests failed; restored in 9.8 s — passed``."""
        def s(v: float | None) -> str:
            return "never" if v is None else f"{v:.1f} s"

        head = f"{self.kind} {self.region}: "
        if self.verdict == "refused":
            return head + "refused: " + "; ".join(self.reasons)
        moved = (f"traffic left in {s(self.answers_moved_s)} (answers) / {s(self.clients_moved_s)} "
                 f"(clients, TTL {self.ttl_s:g})")
        lost = f"{self.failed_requests:,} of {self.total_requests:,} requests failed"
        if self.kind == "kill" and self.failed_requests:
            bound = f" (≤ {self.expected_window_s:.1f} s allowed)" if self.expected_window_s is not None else ""
            lost += f" over {self.error_window_s:.1f} s{bound}"
        if self.residency_violations:
            lost += f"; {self.residency_violations:,} answers broke residency"
        back = f"restored in {s(self.restored_s)}"
        tail = self.verdict if not self.reasons else f"{self.verdict}: " + "; ".join(self.reasons)
        return f"{head}{moved}; {lost}; {back} — {tail}"


__all__ = [
    "BlockedWindow", "DrillEvent", "DrillKind", "DrillLimits", "DrillLock", "DrillReport", "RequestOutcome",
    "RequestRecord", "SecondSample", "Verdict", "Weekday",
]
