"""``gtm apply`` against servers that close the connection without answering: the error names
the provider (name and kind), the server and the operation, and the exit code is 1 (it once
printed only ``Aborted.``: dnspython's ``EOFError`` escaped and click took it for Ctrl-D)."""

from __future__ import annotations

import base64
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gtm.store.keys import Keys
from tests.cli.test_cli import gtm, ns, put_reports, regions_with_4_replicas
from tests.support.redis import REDIS_URL
from tests.support.silent import SilentServer

__all__ = ["ns"]  # the fixture, shared with test_cli


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    with SilentServer() as s:
        yield s


def policy_with(tmp_path: Path, providers: str) -> Path:
    f = tmp_path / "policy.yaml"
    f.write_text(textwrap.dedent("""\
        zones:
          - name: gtm.example.com
            nameservers: [ns1.gtm.example.com]
        services:
          - name: chat
            fqdn: chat.gtm.example.com
            zone: gtm.example.com
            model: llama-3.1-8b
            regions: [us-east-1, us-west-2, eu-west-1, eu-central-1]
        providers:
        """) + textwrap.indent(textwrap.dedent(providers), "  "))
    return f


def apply(ns: str, policy: Path, provider: str) -> tuple[int, str]:
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    put_reports(r, Keys(ns), spare=3.0)
    r.close()
    code, _, err = gtm("apply", "--yes", "--provider", provider, "--redis", REDIS_URL, "--ns", ns,
                       "--policies", str(policy), "--regions", str(regions_with_4_replicas()))
    # Only the error line: a log handler an earlier in-process command left behind may write too.
    lines = [line for line in err.splitlines() if line.startswith("provider error: ")]
    assert len(lines) == 1, err
    return code, lines[0]


def test_rfc2136_server_closing_the_connection(
    tmp_path: Path, ns: str, silent: SilentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GTM_TEST_TSIG_SECRET", base64.b64encode(b"k" * 32).decode())
    policy = policy_with(tmp_path, f"""\
        - name: bind-primary
          kind: rfc2136
          options: {{server: 127.0.0.1, port: {silent.port}, tsig_key_name: gtm-key, tsig_algorithm: hmac-sha256,
                    tsig_secret_env: GTM_TEST_TSIG_SECRET, timeout_s: 2}}
        """)
    code, err = apply(ns, policy, "bind-primary")
    assert code == 1, err
    # Closed before or after dnspython wrote its query: EOF or a reset, the same failure.
    assert err.startswith(
        f"provider error: TemporaryProviderError: bind-primary (rfc2136) at 127.0.0.1:{silent.port}: "
        "AXFR gtm.example.com: the server closed the connection without answering ("
    ), err
    assert err.endswith("); an update may or may not have been applied; re-observe and retry"), err
    assert silent.accepted >= 1


def test_route53_endpoint_closing_the_connection(
    tmp_path: Path, ns: str, silent: SilentServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_CONFIG_FILE", "/dev/null"), ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")):
        monkeypatch.setenv(var, value)
    url = f"http://127.0.0.1:{silent.port}"
    policy = policy_with(tmp_path, f"""\
        - name: r53-main
          kind: route53
          options: {{endpoint_url: "{url}", hosted_zone_ids: {{gtm.example.com: Z0GTM}}, max_attempts: 1}}
        """)
    code, err = apply(ns, policy, "r53-main")
    assert code == 1, err
    assert err.startswith(
        f"provider error: TemporaryProviderError: r53-main (route53) at {url}: ListResourceRecordSets: "
        "ConnectionClosedError: Connection was closed before we received a valid response from endpoint URL: "
        f'"{url}/2013-04-01/hostedzone/Z0GTM/rrset'
    ), err
    assert silent.accepted >= 1
