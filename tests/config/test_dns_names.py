"""One spelling per DNS name (``gtm.models.dnsname``) and where each provider kind publishes a
service's pools (``gtm.models.published``), which the policy check and the providers share."""

from __future__ import annotations

import pytest

from gtm.models.dnsname import a_label_name
from gtm.models.published import pool_names, route53_pool_name
from gtm.providers.records import normalize_name
from gtm.providers.rfc2136 import segment_name


@pytest.mark.parametrize(("written", "spelt"), [
    ("Chat.GTM.example.com.", "chat.gtm.example.com"),
    ("chat.bücher.example", "chat.xn--bcher-kva.example"),
    ("chat.XN--BCHER-KVA.example", "chat.xn--bcher-kva.example"),
    ("faß.de", "xn--fa-hia.de"),  # IDNA 2008 keeps ß (IDNA 2003 made it "fass")
    ("_gtm-owner.chat.gtm.example.com", "_gtm-owner.chat.gtm.example.com"),
])
def test_one_spelling(written: str, spelt: str) -> None:
    assert a_label_name(written) == spelt
    assert normalize_name(written) == spelt  # the providers' spelling is the policy's


@pytest.mark.parametrize(("written", "problem"), [
    ("  ", "empty DNS name"),
    ("chat..example", "empty label"),
    ("a" * 64 + ".example", "longer than 63 octets"),
    (".".join(["a" * 60] * 5), "longer than 253 characters"),
    ("chat\u2044x.example", "is not a valid DNS name: label"),
])
def test_invalid_names_say_why(written: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        a_label_name(written)


def test_pool_names_per_provider_kind() -> None:
    fqdn = "chat.gtm.example.com"
    segs = [("eu", False), ("default", True)]
    assert pool_names("rfc2136", fqdn, segs) == ["eu.chat.gtm.example.com"]
    assert [segment_name(fqdn, s, d) for s, d in segs] == ["eu.chat.gtm.example.com", fqdn]
    assert pool_names("route53", fqdn, segs) == [route53_pool_name(fqdn, "eu"), "default.pool.chat.gtm.example.com"]
    assert pool_names("clouddns", fqdn, segs) == ["eu.gtm-pool.chat.gtm.example.com",
                                                  "default.gtm-pool.chat.gtm.example.com"]
    assert pool_names("clouddns", fqdn, [("eu", False)]) == ["eu.gtm-pool.chat.gtm.example.com",
                                                             "nomatch.gtm-pool.chat.gtm.example.com"]
    assert pool_names("clouddns", fqdn, [("default", True)]) == []  # the pool sits at the service name
    assert pool_names("embedded", fqdn, segs) == []
