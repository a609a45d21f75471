"""``--log-format json``: one JSON object a line with ``ts``, ``level``, ``logger``, ``message``
and the audit's field names; audit writes are logged with their fields; secrets never appear."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from gtm.config.settings import redact
from gtm.log import get_logger, is_secret_key, setup_logging
from gtm.models.audit import AuditDecision, AuditEntry
from gtm.store import Store

SECRET = "s3cr3t-Pa55-" + "x" * 8


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    setup_logging("INFO", json_lines=True)
    yield capsys
    setup_logging("INFO")


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    err = capsys.readouterr().err
    assert SECRET not in err
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_fields_and_context(json_logs: pytest.CaptureFixture[str]) -> None:
    log = get_logger("controller")
    log.info("cycle: %s now in force", "policy", extra={
        "region": "eu-west-1", "action": "drain", "actor": "alice", "reason": "kernel", "via": "cli",
        "generation": 42, "fencing_token": 7, "policy_digest": "sha256:ab", "password": SECRET,
        "api_token": SECRET, "stray": object()})
    log.debug("not at INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("cycle: planning failed")
    first, second = _lines(json_logs)
    assert set(first) == {"ts", "level", "logger", "message", "region", "action", "actor", "reason", "via",
                          "generation", "fencing_token", "policy_digest"}
    assert (first["level"], first["logger"]) == ("INFO", "gtm.controller")
    assert first["message"] == "cycle: policy now in force"
    assert first["generation"] == 42 and first["fencing_token"] == 7
    assert str(first["ts"]).endswith("Z") and "T" in str(first["ts"])
    assert second["level"] == "ERROR" and "ValueError: boom" in str(second["exc_info"])


def test_a_password_in_a_url_is_redacted(json_logs: pytest.CaptureFixture[str]) -> None:
    get_logger("agent").info("agent: redis %s", redact(f"redis://gtm:{SECRET}@10.0.0.1:6380/0"))
    (line,) = _lines(json_logs)
    assert "10.0.0.1" in str(line["message"])


def test_secret_keys() -> None:
    for name in ("password", "GTM_REDIS_PASSWORD_FILE", "api_token", "token", "Authorization", "aws_secret",
                 "api_key", "credentials"):
        assert is_secret_key(name), name
    for name in ("fencing_token", "region", "reason", "generation", "policy_digest"):
        assert not is_secret_key(name), name


def test_text_format_keeps_context_short(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO")
    setup_logging("INFO")  # set up twice: still one handler
    get_logger("audit").info("append_audit: drain", extra={"region": "eu-west-1", "via": "cli", "reason": "long"})
    get_logger("audit").info("plain")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].endswith("INFO gtm.audit append_audit: drain [region=eu-west-1 via=cli]")
    assert err[1].endswith("INFO gtm.audit plain")
    assert len([h for h in logging.getLogger("gtm").handlers if getattr(h, "_gtm_handler", False)]) == 1


async def test_audit_writes_are_logged_with_their_fields(json_logs: pytest.CaptureFixture[str],
                                                         redis_store: Store) -> None:
    await redis_store.append_audit(AuditEntry(ts=1.0, action="drain", region="eu-west-1", actor="alice",
                                              reason="GPU driver upgrade", via="cli", policy_digest="sha256:ab",
                                              expires_at=99.0))
    await redis_store.append_audit(AuditEntry(ts=2.0, generation=9, fencing_token=3, actor="controller",
                                              via="controller", held=False, policy_digest="sha256:ab",
                                              decisions=[AuditDecision(subject="pool x", action="weight 1 -> 0")]))
    drain, plan = [line for line in _lines(json_logs) if line["logger"] == "gtm.audit"]
    assert drain["message"] == "append_audit: drain eu-west-1 by alice via cli: GPU driver upgrade"
    assert {k: drain[k] for k in ("region", "action", "actor", "reason", "via", "policy_digest", "expires_at")} == {
        "region": "eu-west-1", "action": "drain", "actor": "alice", "reason": "GPU driver upgrade", "via": "cli",
        "policy_digest": "sha256:ab", "expires_at": 99.0}
    assert plan["message"] == "append_audit: plan generation 9 (1 decisions) by controller via controller"
    assert (plan["generation"], plan["fencing_token"], plan["held"]) == (9, 3, False)


def test_audit_summary() -> None:
    assert AuditEntry(ts=1.0).summary() == "entry"
    assert AuditEntry(ts=1.0, action="undamp", region="us-west-2").summary() == "undamp us-west-2"
    assert AuditEntry(ts=1.0).log_fields() == {}


def test_library_warnings_are_json_lines_too() -> None:
    """In a fresh process (pytest owns the root logger here): a library's error on Python's root
    logger comes out as a JSON line; its INFO is not written."""
    import subprocess
    import sys

    code = ("import logging; from gtm.log import setup_logging, get_logger; setup_logging(json_lines=True); "
            "logging.getLogger('aiohttp.server').error('Error handling request'); "
            "logging.getLogger('aiohttp.access').info('not at WARNING'); get_logger('agent').info('ours')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(d["logger"], d["level"], d["message"]) for d in lines] == [
        ("aiohttp.server", "ERROR", "Error handling request"), ("gtm.agent", "INFO", "ours")]
