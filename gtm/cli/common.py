"""What every ``gtm`` command shares: the consoles, running a coroutine with the documented
exit codes, loading the local policy, the Redis URL, JSON output."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from gtm.config.loader import Config, load_config
from gtm.config.settings import Settings
from gtm.errors import ConfigError, GtmError, RefusedError, StoreError, UsageError

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def fail(exc: BaseException, debug: bool, code: int = 1) -> NoReturn:
    """Print ``exc`` as ``ErrorType: message`` and exit with ``code`` (re-raise with --debug)."""
    if debug:
        raise exc
    err_console.print(f"[red]{type(exc).__name__}[/]: {escape(str(exc))}", highlight=False)
    raise typer.Exit(code)


EXIT_ERROR = 1
"""Something failed (Redis unreachable, a provider error)."""
EXIT_USAGE = 2
"""The command line or the local configuration is invalid; nothing was done."""
EXIT_REFUSED = 3
"""The request is valid but refused now (safety rules, unknown region, wrong state); nothing written."""


def run(
    coro_fn: Callable[[], Awaitable[T]],
    debug: bool,
    *,
    on_refused: Callable[[RefusedError], None] | None = None,
) -> T:
    """Run ``coro_fn()`` with the documented exit codes: ``ConfigError`` and ``UsageError``
    exit 2, ``RefusedError`` (and its ``UnknownRegionError``) exits 3, any other ``GtmError``
    exits 1. ``on_refused`` prints a refusal itself (e.g. as JSON for ``-o json``)."""
    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except (ConfigError, UsageError) as exc:
        fail(exc, debug, EXIT_USAGE)
    except RefusedError as exc:
        if on_refused is not None and not debug:
            on_refused(exc)
            raise typer.Exit(EXIT_REFUSED) from None
        fail(exc, debug, EXIT_REFUSED)
    except GtmError as exc:
        fail(exc, debug, EXIT_ERROR)
    raise AssertionError("unreachable")


def config_or_exit(policies: str, regions: str, debug: bool) -> Config:
    """The local policy and inventory, or exit 2 with every problem."""
    try:
        return load_config(policies, regions)
    except ConfigError as exc:
        fail(exc, debug, 2)
    raise AssertionError("unreachable")


def config_or_warn(policies: str, regions: str) -> Config | None:
    """The local config, or None with a warning: read-only views must work with broken files."""
    try:
        return load_config(policies, regions)
    except ConfigError as exc:
        err_console.print(
            f"[yellow]warning[/]: local policy/inventory files do not validate ({len(exc.reasons)} problem(s); "
            f"first: {escape(exc.reasons[0]) if exc.reasons else '?'}); showing what Redis holds. "
            "`gtm policy validate` lists them all."
        )
        return None


def policy_snapshot(url: str, ns: str) -> tuple[Config, float] | None:
    """The leader's policy snapshot from Redis as ``(Config, written_at)``, or None when there is
    none or it cannot be read or used (the reason is printed)."""
    from gtm.config.snapshot import load_snapshot
    from gtm.store import connect

    async def go() -> str | None:
        store = connect(url, ns=ns)
        try:
            return await store.get_policy_snapshot()
        finally:
            await store.aclose()

    try:
        text = asyncio.run(go())
        return load_snapshot(text) if text is not None else None
    except (ConfigError, StoreError) as exc:
        err_console.print(f"[yellow]no usable policy snapshot in Redis[/]: {escape(str(exc))}", highlight=False)
        return None


def parse_hostport(value: str, flag: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; an empty host is 127.0.0.1) as ``(host, port)``; with
    ``default_port`` the port may be left out. Raises ``UsageError`` naming ``flag``."""
    host, sep, port = value.rpartition(":")
    if not sep and default_port is not None and value:
        return value.strip("[]"), default_port
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        want = "HOST:PORT" if default_port is None else "HOST[:PORT]"
        raise UsageError(f"{flag} wants {want} (e.g. 127.0.0.1:9180), got {value!r}")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def store_url(redis: str | None) -> str:
    """``--redis`` / ``GTM_REDIS_URL`` with the password file applied; exit 2 if it cannot be read."""
    try:
        return Settings().resolved_redis_url(redis)
    except OSError as exc:
        err_console.print(f"[red]ConfigError[/]: cannot read GTM_REDIS_PASSWORD_FILE: {exc.strerror or exc}")
        raise typer.Exit(2) from None


def print_json(data: Any) -> None:
    """``data`` as indented, key-sorted JSON on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
