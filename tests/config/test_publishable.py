"""What validates is what publishes: ``load_config`` (``gtm policy validate`` and the
controller's policy check) refuses a policy DNS cannot hold or that would be published other
than written, each reason with file, field and value."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gtm.cli.main import app
from gtm.config import load_config
from gtm.engine import plan
from gtm.errors import ConfigError
from gtm.providers.route53 import Route53Provider
from tests.factories import T0, healthy_reports

ROOT = Path(__file__).resolve().parents[2]
REGIONS = ROOT / "regions"

ZONE = """\
zones:
  - name: gtm.example.com
    nameservers: [ns1.gtm.example.com]
    nameserver_addresses: {ns1.gtm.example.com: 192.0.2.53}
"""


def policy(tmp_path: Path, text: str, zones: str = ZONE) -> Path:
    f = tmp_path / "policy.yaml"
    f.write_text(zones + textwrap.dedent(text), encoding="utf-8")
    return f


def reasons(f: Path, regions: Path = REGIONS) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(f, regions)
    return exc.value.reasons


@pytest.fixture
def lb_regions(tmp_path: Path) -> Path:
    """The example inventory with us-east-1 and eu-central-1 answering with a hostname (CNAME)."""
    d = tmp_path / "regions"
    shutil.copytree(REGIONS, d)
    for name, host in (("us-east-1", "lb-use1.example.net"), ("eu-central-1", "lb-euc1.example.net")):
        f = d / f"{name}.yaml"
        text = f.read_text()
        start = text.index("endpoints:")
        end = text.index("fleet:")
        f.write_text(text[:start] + f"endpoints:\n  - hostname: {host}\n" + text[end:])
    return d


# -- CNAME at the apex, CNAME beside other data ------------------------------------------------


def test_cname_at_the_zone_apex_is_refused(tmp_path: Path, lb_regions: Path) -> None:
    f = policy(tmp_path, """\
    services:
      - name: chat
        fqdn: gtm.example.com
        zone: gtm.example.com
        regions: [us-east-1]
    """)
    assert reasons(f, lb_regions) == [
        f"{f}: services[0].fqdn: service 'chat' is at the apex of zone 'gtm.example.com', but regions "
        "['us-east-1'] answer with hostname endpoints (a CNAME); a CNAME cannot sit at a zone apex (it holds SOA "
        "and NS): use address endpoints or a name below the apex (value: 'gtm.example.com')"
    ]


def test_address_service_at_the_apex_is_fine_but_not_with_clouddns_segments(tmp_path: Path) -> None:
    text = """\
    services:
      - name: chat
        fqdn: gtm.example.com
        zone: gtm.example.com
        regions: [us-east-1, eu-west-1]
        segments:
          - {name: eu, match: {continents: [EU]}, residency: {jurisdictions: [EU]}}
    """
    assert load_config(policy(tmp_path, text), REGIONS).policy.services[0].fqdn == "gtm.example.com"
    gcp = "\n    providers:\n      - {name: gcp, kind: clouddns, options: {project: p}}\n"
    f = policy(tmp_path, text.rstrip() + gcp)
    (reason,) = reasons(f)
    assert reason.startswith(f"{f}: services[0].fqdn: service 'chat' is at the apex of zone 'gtm.example.com', "
                             "but Cloud DNS provider 'gcp' publishes a service with segments as a geo CNAME; ")


def test_segment_mixing_hostname_and_address_endpoints_is_refused(tmp_path: Path, lb_regions: Path) -> None:
    f = policy(tmp_path, """\
    services:
      - name: chat
        fqdn: chat.gtm.example.com
        zone: gtm.example.com
        regions: [us-east-1, us-west-2, eu-west-1, eu-central-1]
        segments:
          - {name: eu, match: {continents: [EU]}, residency: {jurisdictions: [EU]}}
    """)
    assert reasons(f, lb_regions) == [
        f"{f}: services[0].segments[0]: segment 'eu' of service 'chat' mixes hostname endpoints (regions "
        "['eu-central-1']) with address endpoints (regions ['eu-west-1']); its name would hold a CNAME beside "
        "A/AAAA records, which DNS forbids: give the segment's regions one kind of endpoint",
        f"{f}: services[0].regions: segment 'default' of service 'chat' mixes hostname endpoints (regions "
        "['eu-central-1', 'us-east-1']) with address endpoints (regions ['eu-west-1', 'us-west-2']); its name "
        "would hold a CNAME beside A/AAAA records, which DNS forbids: give the segment's regions one kind of "
        "endpoint",
    ]


def test_route53_refuses_mixing_across_segments(tmp_path: Path, lb_regions: Path) -> None:
    text = """\
    services:
      - name: chat
        fqdn: chat.gtm.example.com
        zone: gtm.example.com
        regions: [us-east-1, eu-west-1]
        segments:
          - {name: eu, match: {continents: [EU]}, regions: [eu-west-1]}
          - {name: default, regions: [us-east-1]}
    """
    # Each segment is one kind: RFC2136 publishes them at separate names, which is fine...
    bind = ("\n    providers:\n      - {name: bind, kind: rfc2136, options: {server: 127.0.0.1, tsig_key_name: k, "
            "tsig_secret_env: GTM_TEST_UNUSED}}\n")
    ok = text.rstrip() + bind
    load_config(policy(tmp_path, ok), lb_regions)
    # ...Route 53 puts aliases of every type at the service name.
    f = policy(tmp_path, text.rstrip() + "\n    providers:\n      - {name: r53, kind: route53}\n")
    assert reasons(f, lb_regions) == [
        f"{f}: services[0]: service 'chat' mixes hostname endpoints (regions ['us-east-1']) with address "
        "endpoints (regions ['eu-west-1']) across its segments; Route 53 provider 'r53' publishes every "
        "segment's types at 'chat.gtm.example.com' (a CNAME beside A/AAAA): give the service's regions one kind "
        "of endpoint"
    ]


CHAT_EU = """\
  - name: chat
    fqdn: chat.gtm.example.com
    zone: gtm.example.com
    regions: [us-east-1, eu-west-1]
    segments:
      - {name: eu, match: {continents: [EU]}, residency: {jurisdictions: [EU]}}
"""


@pytest.mark.parametrize(("fqdn", "also"), [
    ("ns1.gtm.example.com", "NS glue of zone 'gtm.example.com' (nameserver_addresses)"),
    ("eu.pool.chat.gtm.example.com", "a pool name of service 'chat' (route53 provider 'r53')"),
    ("_gtm-owner.chat.gtm.example.com", "the ownership marker of 'chat.gtm.example.com'"),
])
def test_a_service_name_the_zone_already_publishes_is_refused(tmp_path: Path, fqdn: str, also: str) -> None:
    f = policy(tmp_path, "services:\n" + CHAT_EU + f"""\
  - name: other
    fqdn: {fqdn}
    zone: gtm.example.com
    regions: [eu-west-1]
providers:
  - {{name: r53, kind: route53}}
""")
    assert reasons(f) == [
        f"{f}: services[1].fqdn: service 'other' is {fqdn!r}, which the zone also publishes as {also}; one name "
        f"cannot hold both (value: {fqdn!r})"
    ]


# -- residency: an explicit region outside the pin ---------------------------------------------


def test_pinned_segment_listing_a_region_outside_its_jurisdictions_is_refused(tmp_path: Path) -> None:
    f = policy(tmp_path, """\
    services:
      - name: chat
        fqdn: chat.gtm.example.com
        zone: gtm.example.com
        regions: [us-east-1, eu-west-1]
        segments:
          - name: eu
            match: {continents: [EU]}
            residency: {jurisdictions: [EU]}
            regions: [eu-west-1, us-east-1]
    """)
    assert reasons(f) == [
        f"{f}: services[0].segments[0].regions[1]: segment 'eu' of 'chat' is pinned to jurisdictions ['EU'] but "
        "lists region 'us-east-1', whose jurisdiction is 'US' (regions/us-east-1.yaml); it would never be routed "
        "to: remove it or widen the pin (value: 'us-east-1')"
    ]


def test_pinned_segment_inheriting_the_services_regions_serves_those_inside_the_pin(tmp_path: Path) -> None:
    """The EU segment of a global service (no ``regions:`` of its own) is how policies/ is written:
    the US regions are not the segment's, and that is not an error."""
    f = policy(tmp_path, "services:\n" + CHAT_EU + """\
      - name: spilling
        match: {continents: [AF]}
        residency: {jurisdictions: [EU]}
        regions: [eu-west-1, us-east-1]
        on_unavailable: spill
        spill_to: [US]
""")
    cfg = load_config(f, REGIONS)  # a spill_to region may be listed: the segment spills to it
    assert [s.name for s in cfg.policy.services[0].segments] == ["eu", "spilling"]


# -- static weights ------------------------------------------------------------------------------


def test_static_service_must_weigh_every_listed_region(tmp_path: Path) -> None:
    text = """\
    services:
      - name: embed
        fqdn: embed.gtm.example.com
        zone: gtm.example.com
        routing: static
        regions: [us-east-1, eu-west-1, us-west-2]
        static_weights: {us-east-1: 200%s}
    """
    f = policy(tmp_path, text % "")
    (reason,) = reasons(f)
    assert reason.startswith(
        f"{f}:6: services[0]: service 'embed' (routing: static): static_weights gives no weight to regions "
        "['eu-west-1', 'us-west-2']; give every listed region a weight (0 parks a region) (value: "
    )
    # An explicit 0 is how an operator parks a region.
    cfg = load_config(policy(tmp_path, text % ", eu-west-1: 0, us-west-2: 0"), REGIONS)
    assert cfg.policy.services[0].static_weights == {"us-east-1": 200, "eu-west-1": 0, "us-west-2": 0}


# -- IDN: Unicode and punycode are one name ----------------------------------------------------


def test_unicode_zone_and_punycode_name_are_the_same_name(tmp_path: Path) -> None:
    zones = """\
zones:
  - name: bücher.example
    nameservers: [ns1.bücher.example]
    nameserver_addresses: {ns1.xn--bcher-kva.example: 192.0.2.53}
"""
    f = policy(tmp_path, """\
    services:
      - name: chat
        fqdn: chat.xn--bcher-kva.example
        zone: bücher.example
        regions: [us-east-1]
      - name: embed
        fqdn: Embed.Bücher.Example.
        zone: xn--bcher-kva.example
        regions: [us-east-1]
    providers:
      - {name: r53, kind: route53, zones: [bücher.example]}
    """, zones=zones)
    cfg = load_config(f, REGIONS)
    zone = cfg.policy.zones[0]
    assert zone.name == "xn--bcher-kva.example"
    assert zone.nameservers == ("ns1.xn--bcher-kva.example",)
    assert [(s.fqdn, s.zone) for s in cfg.policy.services] == [
        ("chat.xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("embed.xn--bcher-kva.example", "xn--bcher-kva.example"),
    ]
    assert cfg.policy.providers[0].zones == ("xn--bcher-kva.example",)


def test_an_invalid_idn_label_is_reported_with_its_value(tmp_path: Path) -> None:
    f = policy(tmp_path, """\
    services:
      - name: chat
        fqdn: "chat\u2044x.gtm.example.com"
        zone: gtm.example.com
        regions: [us-east-1]
    """)
    (reason,) = reasons(f)
    assert reason.startswith(f"{f}:7: services[0].fqdn: 'chat\u2044x.gtm.example.com' is not a valid DNS name")


# -- ttl: 0 ------------------------------------------------------------------------------------


def test_ttl_zero_is_accepted_with_a_warning(tmp_path: Path) -> None:
    f = policy(tmp_path, """\
    services:
      - name: chat
        fqdn: chat.gtm.example.com
        zone: gtm.example.com
        ttl: 0
        regions: [us-east-1]
    """)
    warning = (
        f"{f}: services[0].ttl: service 'chat' has ttl 0: resolvers cannot cache its answers, every client lookup "
        "reaches the authoritative servers (and some resolvers clamp 0 to their own minimum) (value: 0)"
    )
    cfg = load_config(f, REGIONS)
    assert cfg.policy.services[0].ttl == 0
    assert cfg.warnings == (warning,)
    res = CliRunner().invoke(app, ["policy", "validate", "--regions", str(REGIONS), str(f)], catch_exceptions=False)
    assert res.exit_code == 0
    assert "valid" in res.stdout
    assert " ".join(res.stderr.split()) == f"warning: {warning}"
    # And 0 is what a provider writes (a value, not "unset").
    state = plan(cfg.policy, cfg.inventory, healthy_reports(T0, ["us-east-1"]), {}, None, T0)
    rendered = Route53Provider("r53", owner_id="gtm", zones=["gtm.example.com"]).render(state, "gtm.example.com")
    assert {(rs.name, rs.set_identifier, rs.ttl) for rs in rendered if rs.weight is not None} == {
        ("default.pool.chat.gtm.example.com", "us-east-1", 0)
    }
