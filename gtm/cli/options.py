"""Options shared by ``gtm`` and its sub-apps (``gtm rollout``), so every command checks them
the same way: Redis URL, namespace, policy and inventory paths, output format, debug."""

from __future__ import annotations

import os
import re
from enum import StrEnum

import typer

from gtm.config.settings import DEFAULT_REDIS_URL


class Output(StrEnum):
    """``--output``: ``text`` for people, ``json`` for scripts."""

    text = "text"
    json = "json"


def check_ns(value: str) -> str:
    """Validate ``--namespace``: 1-64 characters from A-Z a-z 0-9 _ . - (it becomes the
    ``{ns}`` hash tag of every Redis key). Raises ``typer.BadParameter`` (exit 2)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value or ""):
        raise typer.BadParameter("1-64 characters from A-Z a-z 0-9 _ . -")
    return value


RedisOpt = typer.Option(
    None, "--redis", envvar="GTM_REDIS_URL",
    help=f"Redis URL (redis://, rediss:// for TLS, embedded:// in-process). Default {DEFAULT_REDIS_URL}.",
)
NsOpt = typer.Option(
    "default", "--namespace", "--ns", envvar="GTM_NAMESPACE", callback=check_ns,
    help="Installation namespace in Redis (1-64 of A-Z a-z 0-9 _ . -).",
)
PoliciesOpt = typer.Option("policies", "--policies", envvar="GTM_POLICIES", help="Policy file or directory.")
RegionsOpt = typer.Option("regions", "--regions", envvar="GTM_REGIONS", help="Region inventory directory.")
OutputOpt = typer.Option(Output.text, "--output", "-o", help="text for people, json for scripts.")
DebugOpt = typer.Option(False, "--debug", help="Show tracebacks on error.")
ActorOpt = typer.Option(
    os.environ.get("USER", "operator"), "--actor", help="Who asks (shown in status and the audit stream)."
)


class LogFormat(StrEnum):
    """``--log-format``: ``text`` lines, or ``json`` (one object a line: ``ts``, ``level``,
    ``logger``, ``message`` and the audit's field names; see ``gtm.log``)."""

    text = "text"
    json = "json"


LogFormatOpt = typer.Option(
    LogFormat.text, "--log-format", envvar="GTM_LOG_FORMAT",
    help="text, or json: one JSON object a line (ts, level, logger, message, and the audit's fields "
    "region, action, actor, reason, via, generation, fencing_token, policy_digest where they apply).",
)
