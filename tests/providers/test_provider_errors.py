"""A provider error names the provider, its kind, the server and the operation (here: an RFC2136
UPDATE sent over UDP to a server that never answers)."""

from __future__ import annotations

import base64

import pytest

from gtm.errors import TemporaryProviderError
from gtm.providers.records import Change, Plan, RecordSet
from gtm.providers.rfc2136 import Rfc2136Provider
from tests.support.silent import SilentServer


async def test_rfc2136_update_unanswered_names_provider_server_and_operation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GTM_TEST_TSIG_SECRET", base64.b64encode(b"k" * 32).decode())
    with SilentServer() as silent:
        provider = Rfc2136Provider(
            "bind-primary", owner_id="gtm", zones=["gtm.example.com"], server="127.0.0.1", port=silent.port,
            tsig_key_name="gtm-key", tsig_algorithm="hmac-sha256", tsig_secret_env="GTM_TEST_TSIG_SECRET",
            timeout_s=0.3, verify=False,
        )
        rs = RecordSet("chat.gtm.example.com", "A", 30, ("192.0.2.10",))
        plan = Plan("bind-primary", "gtm.example.com", (Change("create", new=rs),), owned_before=0)
        with pytest.raises(TemporaryProviderError) as info:
            await provider.apply(plan, dry_run=False)
        assert silent.datagrams == 1
    err = info.value
    assert (err.provider, err.kind, err.server) == ("bind-primary", "rfc2136", f"127.0.0.1:{silent.port}")
    assert err.operation.startswith("UPDATE zone gtm.example.com (1 change(s), ") and err.operation.endswith(", udp)")
    assert str(err) == (
        f"bind-primary (rfc2136) at 127.0.0.1:{silent.port}: {err.operation}: no response in 0.3s; an update may "
        "or may not have been applied; re-observe and retry"
    )
