"""``gtm apply --yes`` against a real BIND whose first zone refuses the key: the other zone is
still applied, the output says so (partial), the error names the refused zone and the rcode,
and the exit code is 1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest
import redis

from gtm.store.keys import Keys
from gtm.testing.bind import BindServer
from tests.cli.test_cli import gtm, ns, put_reports, regions_with_4_replicas
from tests.providers.test_rfc2136 import named_installed  # noqa: F401 (fixture)
from tests.support.redis import REDIS_URL

__all__ = ["ns"]  # the fixture, shared with test_cli

ALPHA, BETA = "alpha.example.com", "beta.example.com"


@pytest.fixture
def bind(named_installed: None, tmp_path: Path) -> Iterator[BindServer]:  # noqa: F811
    server = BindServer.start([ALPHA, BETA], directory=tmp_path / "bind", refuse_updates=[ALPHA], statistics=True)
    try:
        yield server
    finally:
        server.stop()


def test_apply_applies_the_zones_that_accept_and_names_the_refused_one(
    tmp_path: Path, ns: str, bind: BindServer
) -> None:
    services = "".join(
        f"  - name: chat-{z.split('.')[0]}\n    fqdn: chat.{z}\n    zone: {z}\n    model: llama-3.1-8b\n"
        "    regions: [us-east-1, us-west-2, eu-west-1, eu-central-1]\n"
        for z in (ALPHA, BETA)
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"zones:\n  - name: {ALPHA}\n    nameservers: [ns1.{ALPHA}]\n  - name: {BETA}\n    nameservers: [ns1.{BETA}]\n"
        f"services:\n{services}"
        "providers:\n  - name: bind-primary\n    kind: rfc2136\n"
        f"    options: {{server: {bind.host}, port: {bind.port}, tsig_key_name: {bind.key_name}, "
        f"tsig_algorithm: {bind.algorithm}, tsig_secret_file: {bind.secret_file}}}\n"
    )
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    put_reports(r, Keys(ns), spare=3.0)
    r.close()
    code, out, err = gtm("apply", "--yes", "--redis", REDIS_URL, "--ns", ns, "--policies", str(policy),
                         "--regions", str(regions_with_4_replicas()))
    assert code == 1, err
    line = next(ln for ln in err.splitlines() if ln.startswith("provider error: "))
    assert line.startswith(f"provider error: PermanentProviderError: bind-primary (rfc2136) at {bind.host}:{bind.port}"
                           f": UPDATE zone {ALPHA} ("), line
    assert "REFUSED: the zone's update-policy/allow-transfer does not grant key gtm-key" in line
    assert f"provider bind-primary: partial: 1 zone(s) applied, 1 failed: zone {ALPHA}" in out
    assert f"zone {BETA}: applied create 2" in out
    assert bind.opcode_counts()["UPDATE"] == 2
    for zone, rcode in ((BETA, "NOERROR"), (ALPHA, "NXDOMAIN")):
        response = dns.query.udp(dns.message.make_query(f"chat.{zone}", "A"), bind.host, port=bind.port, timeout=2)
        assert dns.rcode.to_text(response.rcode()) == rcode, zone
