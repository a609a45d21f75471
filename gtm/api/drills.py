"""What the controller can tell about drills (``gtm drill drain|failover|kill``), for the status
page and ``/metrics``: the drill running now (its ``DrillLock`` in Redis) and the verdicts the
drill runner wrote to the audit stream (entries with ``via="drill"``).

The runner records its verdict as an audit entry whose ``action`` names it (``drill verdict``,
``drill drain verdict``) and whose ``note`` is the report's verdict line (``drain eu-west-1:
... — passed``, ``DrillReport.verdict_line``). The verdict word is read from the line's tail
after the last " — " (or ``refused:``), else from the first verdict word in the action, reason
or note. Metrics:

- ``gtm_drill_running``: 1 while a drill holds the lock, else 0 (always exported);
- ``gtm_drill_info{id,kind,region,phase}``: 1 for the running drill;
- ``gtm_drill_last_verdict{kind,region,verdict}``: 1 for the newest verdict in the audit stream
  (0 for the other verdict values, so ``{verdict="failed"} == 1`` means the last drill failed);
- ``gtm_drill_last_verdict_timestamp_seconds{kind,region}``: when it was written, unix seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import get_args

from prometheus_client.core import GaugeMetricFamily

from gtm.models.audit import AuditEntry
from gtm.models.drill import DrillKind, DrillLock, Verdict

__all__ = ["AUDIT_SCAN", "DrillVerdict", "drill_entries", "drill_families", "last_verdict", "verdict_of"]

VERDICTS: tuple[str, ...] = get_args(Verdict)
KINDS: tuple[str, ...] = get_args(DrillKind)
AUDIT_SCAN = 200
"""Audit entries (newest first) searched for the newest drill verdict."""
_WORD = re.compile(r"\b(" + "|".join(VERDICTS) + r")\b")


@dataclass(frozen=True)
class DrillVerdict:
    """A drill's verdict as the audit stream holds it.

    Attributes:
        kind: ``drain``, ``failover``, ``kill`` (``unknown`` when the entry does not say).
        region: the region drilled ("" when the entry does not say).
        verdict: ``passed``, ``failed``, ``aborted`` or ``refused``.
        ts: when it was written, unix seconds.
        line: the verdict line (the entry's note, else its reason).
        actor: who ran the drill.
    """

    kind: str
    region: str
    verdict: str
    ts: float
    line: str
    actor: str


def drill_entries(rows: list[tuple[str, dict[str, str]]]) -> list[AuditEntry]:
    """The drill's audit entries (``via="drill"``) among ``rows`` (``Store.read_audit``),
    in the same order; unreadable entries are skipped."""
    out = []
    for _id, fields in rows:
        if fields.get("via") != "drill":
            continue
        try:
            out.append(AuditEntry.from_fields(fields))
        except ValueError:
            continue
    return out


def verdict_of(entry: AuditEntry) -> DrillVerdict | None:
    """The verdict ``entry`` records, or None when it records none (a start, an act)."""
    if entry.via != "drill":
        return None
    line = entry.note or entry.reason
    verdict = None
    tail = line.rsplit(" — ", 1)[1] if " — " in line else ""
    if tail:
        m = _WORD.match(tail.strip())
        verdict = m.group(1) if m else None
    if verdict is None and "verdict" not in entry.action:
        return None  # only an entry meant as the verdict may be judged by a stray word
    if verdict is None:
        for text in (entry.action, line):
            m = _WORD.search(text)
            if m:
                verdict = m.group(1)
                break
    if verdict is None:
        return None
    words = entry.action.split()
    kind = next((w for w in words if w in KINDS), None)
    head = line.split(":", 1)[0].split() if ":" in line else []
    if kind is None and head and head[0] in KINDS:
        kind = head[0]
    region = entry.region or (head[1] if len(head) == 2 else "")
    return DrillVerdict(kind=kind or "unknown", region=region, verdict=verdict, ts=entry.ts, line=line,
                        actor=entry.actor)


def last_verdict(rows: list[tuple[str, dict[str, str]]]) -> DrillVerdict | None:
    """The newest drill verdict among ``rows`` (newest first, as ``Store.read_audit`` gives)."""
    for entry in drill_entries(rows):
        found = verdict_of(entry)
        if found is not None:
            return found
    return None


def drill_families(lock: DrillLock | None, verdict: DrillVerdict | None) -> list[GaugeMetricFamily]:
    """The drill series of the module docstring, from the running drill's lock and the newest
    verdict."""
    running = GaugeMetricFamily("gtm_drill_running", "1 while a drill runs (holds the drill lock)",
                                value=float(lock is not None))
    out = [running]
    if lock is not None:
        info = GaugeMetricFamily("gtm_drill_info", "The running drill", labels=["id", "kind", "region", "phase"])
        info.add_metric([lock.id, lock.kind, lock.region, lock.phase], 1.0)
        out.append(info)
    if verdict is not None:
        last = GaugeMetricFamily("gtm_drill_last_verdict", "1 for the newest drill verdict in the audit stream",
                                 labels=["kind", "region", "verdict"])
        for v in VERDICTS:
            last.add_metric([verdict.kind, verdict.region, v], float(v == verdict.verdict))
        at = GaugeMetricFamily("gtm_drill_last_verdict_timestamp_seconds",
                               "When the newest drill verdict was written, unix seconds", labels=["kind", "region"])
        at.add_metric([verdict.kind, verdict.region], verdict.ts)
        out += [last, at]
    return out
