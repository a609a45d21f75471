"""Named loggers, one per component (``gtm.agent``, ``gtm.controller``, ``gtm.provider.<id>``),
and the two line formats the daemons write to stderr (``--log-format text|json``).

JSON lines (``setup_logging(json_lines=True)``) are one object per line::

    {"ts": "2026-12-08T00:12:03.412Z", "level": "INFO", "logger": "gtm.audit",
     "message": "drain eu-west-1 by alice via cli: GPU driver upgrade",
     "region": "eu-west-1", "action": "drain", "actor": "alice", "reason": "GPU driver upgrade",
     "via": "cli", "policy_digest": "sha256:..."}

``ts`` is UTC, ISO 8601 with milliseconds. Context passed with ``extra=`` is kept when its key
is one of :data:`CONTEXT_FIELDS` (the audit entry's field names, so log lines and audit
entries join on the same keys); other ``extra`` keys are dropped, so a stray object never
reaches the log. Values of keys that look secret (:func:`is_secret_key`) are replaced by
``"<redacted>"`` in both formats, wherever they come from.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

__all__ = ["CONTEXT_FIELDS", "JsonLineFormatter", "get_logger", "is_secret_key", "setup_logging"]

CONTEXT_FIELDS = (
    "region", "action", "actor", "reason", "via", "generation", "fencing_token", "policy_digest",
    "policy_commit", "expires_at", "rollout", "step", "drill", "provider", "held", "note",
)
"""``extra=`` keys written as JSON fields: the ``AuditEntry`` field names (plus ``drill``
and ``provider``)."""

_SECRET = re.compile(r"(passw|secret|token(?!s?_?count)|api_?key|authorization|credential)", re.I)
_REDACTED = "<redacted>"


def is_secret_key(name: str) -> bool:
    """Whether a field named ``name`` may hold a secret (password, token, API key...).

    ``fencing_token`` is not a secret (a counter, shown by ``gtm status``)."""
    return name != "fencing_token" and bool(_SECRET.search(name))


def get_logger(component: str) -> logging.Logger:
    """Return the logger ``gtm.<component>``."""
    return logging.getLogger(f"gtm.{component}")


class JsonLineFormatter(JsonFormatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message``, the
    :data:`CONTEXT_FIELDS` given with ``extra=``, and ``exc_info`` (the traceback) when one
    is attached."""

    def __init__(self) -> None:
        super().__init__(json_ensure_ascii=False)

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        """Fill ``log_record`` (the JSON object) from ``record``; overrides the library's
        field selection (it would copy every ``extra`` key)."""
        log_record["ts"] = _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
        log_record["level"] = record.levelname
        log_record["logger"] = record.name
        log_record["message"] = record.getMessage()
        for key in CONTEXT_FIELDS:
            value = record.__dict__.get(key)
            if value is not None and value != "":
                log_record[key] = value
        if record.exc_info:
            log_record["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            log_record["exc_info"] = record.exc_text
        for key in list(log_record):
            if is_secret_key(key):
                log_record[key] = _REDACTED


class _TextFormatter(logging.Formatter):
    """``asctime level logger message`` and then ``key=value`` for the context fields given."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = [f"{k}={record.__dict__[k]}" for k in CONTEXT_FIELDS
               if k not in ("reason", "note") and record.__dict__.get(k) not in (None, "")]
        return f"{line} [{' '.join(ctx)}]" if ctx else line


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (it may be replaced
    after set-up: test capture, a daemon redirecting it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    """Configure the root ``gtm`` logger to write to stderr, replacing a handler set before.

    Args:
        level: a logging level name (``DEBUG``, ``INFO``, ``WARNING``...).
        json_lines: one JSON object per line (:class:`JsonLineFormatter`) instead of text;
            then other libraries' warnings and errors (Python's root logger, when nothing
            else handles it) are written as JSON lines too.

    Raises:
        ValueError: ``level`` is not a level name.
    """
    root = logging.getLogger("gtm")
    root.setLevel(level.upper())
    for old in list(root.handlers):
        if getattr(old, "_gtm_handler", False):
            root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(JsonLineFormatter() if json_lines else _TextFormatter())
    handler._gtm_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.propagate = False
    # Libraries' warnings (aiohttp.server, asyncio: "Task exception was never retrieved") go to
    # Python's root logger; in JSON mode they must be JSON lines too, not the plain last resort.
    top = logging.getLogger()
    for old in list(top.handlers):
        if getattr(old, "_gtm_handler", False):
            top.removeHandler(old)
    if json_lines and not top.handlers:
        other = _StderrHandler()
        other.setFormatter(JsonLineFormatter())
        other.setLevel(logging.WARNING)
        other._gtm_handler = True  # type: ignore[attr-defined]
        top.addHandler(other)
