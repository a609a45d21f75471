"""Loading ``policies/`` and ``regions/``: the examples load; every problem is reported at once
with file, line, field path and value."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from gtm.config import load_config, load_inventory, load_policy, policy_digest
from gtm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
REGIONS = ROOT / "regions"

ZONES = """\
zones:
  - name: gtm.example.com
    nameservers: [ns1.gtm.example.com]
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def reasons_of(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return exc.value.reasons


@pytest.fixture
def regions_dir(tmp_path: Path) -> Path:
    """A copy of the example inventory that a test may break."""
    d = tmp_path / "regions"
    shutil.copytree(REGIONS, d)
    return d


# -- the examples ----------------------------------------------------------------------------


def test_example_policies_and_regions_load() -> None:
    cfg = load_config(POLICIES, REGIONS)
    assert sorted(cfg.inventory.regions) == ["eu-central-1", "eu-west-1", "us-east-1", "us-west-2"]
    assert cfg.inventory.jurisdiction_of("eu-west-1") == "EU"
    assert cfg.inventory.jurisdiction_of("us-east-1") == "US"
    assert cfg.policy.name == "default"
    assert cfg.policy.health.fall == 2 and cfg.policy.health.rise == 3
    assert cfg.policy.safety.planned_step == 64
    assert cfg.policy.safety.on_all_unhealthy == "fail-static"
    svcs = {s.name: s for s in cfg.policy.services}
    assert set(svcs) == {"chat", "embed"}
    chat = svcs["chat"]
    assert chat.fqdn == "chat.gtm.example.com" and chat.routing == "capacity"
    eu = next(s for s in chat.segments if s.name == "eu")
    assert eu.residency is not None and eu.residency.jurisdictions == ("EU",)
    assert eu.match.continents == ("EU",)
    assert svcs["embed"].static_weights == {"us-east-1": 200, "eu-west-1": 55}
    assert cfg.digest.startswith("sha256:") and len(cfg.digest) == len("sha256:") + 64
    assert cfg.digest == policy_digest(cfg.policy, cfg.inventory)
    assert str(POLICIES / "default.yaml") in cfg.files
    assert len(cfg.files) == 5
    # Loading twice gives the same digest (it is canonical).
    assert load_config(POLICIES, REGIONS).digest == cfg.digest


# -- field errors: file, line, field path, value ---------------------------------------------


def test_broken_policy_reports_file_line_field_and_value(tmp_path: Path) -> None:
    f = write(
        tmp_path / "policy.yaml",
        """\
        name: broken
        zones:
          - name: gtm.example.com
            nameservers: [ns1.gtm.example.com]
        health:
          fall: 0
        services:
          - name: chat
            fqdn: chat.gtm.example.com
            zone: gtm.example.com
            ttl: -5
            regions: [us-east-1]
          - name: embed
            fqdn: embed.gtm.example.com
            zone: gtm.example.com
            regions: [us-east-1]
            segments:
              - name: eu
                match: {continents: [XX]}
        """,
    )
    with pytest.raises(ConfigError) as exc:
        load_policy(f)
    reasons = reasons_of(exc)
    assert len(reasons) == 3, reasons
    by_field = {r.split(": ")[1]: r for r in reasons}
    assert by_field["health.fall"] == (
        f"{f}:6: health.fall: Input should be greater than or equal to 1 (value: 0)"
    )
    assert by_field["services[0].ttl"] == (
        f"{f}:11: services[0].ttl: Input should be greater than or equal to 0 (value: -5)"
    )
    continents = by_field["services[1].segments[0].match.continents"]
    assert continents.startswith(f"{f}:19: services[1].segments[0].match.continents: ")
    assert "unknown continent codes ['XX']" in continents
    assert continents.endswith('(value: ["XX"])')
    # Every reason is also in the message.
    assert all(r in str(exc.value) for r in reasons)


def test_model_level_error_points_at_the_item(tmp_path: Path) -> None:
    f = write(
        tmp_path / "policy.yaml",
        ZONES
        + """\
services:
  - name: chat
    fqdn: chat.gtm.example.com
    zone: gtm.example.com
    regions: [us-east-1]
  - name: embed
    fqdn: embed.gtm.example.com
    zone: gtm.example.com
    routing: static
    regions: [us-east-1]
    static_weights: {us-east-1: 300}
""",
    )
    with pytest.raises(ConfigError) as exc:
        load_policy(f)
    (reason,) = reasons_of(exc)
    # The weight is checked on the field itself: file, its own line, the exact path, the value.
    assert reason == (
        f"{f}:14: services[1].static_weights.us-east-1: Input should be less than or equal to 255 (value: 300)"
    )


def test_cross_field_error_points_at_the_item(tmp_path: Path) -> None:
    f = write(
        tmp_path / "policy.yaml",
        ZONES
        + """\
services:
  - name: chat
    fqdn: chat.gtm.example.com
    zone: gtm.example.com
    regions: [us-east-1]
  - name: embed
    fqdn: embed.other.example.com
    zone: gtm.example.com
    regions: [us-east-1]
""",
    )
    with pytest.raises(ConfigError) as exc:
        load_policy(f)
    (reason,) = reasons_of(exc)
    assert reason.startswith(f"{f}:9: services[1]: fqdn 'embed.other.example.com' is not inside zone 'gtm.example.com'")


def test_document_wide_check_points_at_the_entry_it_names(tmp_path: Path) -> None:
    f = write(
        tmp_path / "policy.yaml",
        ZONES
        + """\
services:
  - name: chat
    fqdn: chat.gtm.example.com
    zone: gtm.example.com
    regions: [us-east-1, eu-west-1]
rollouts:
  - name: ok-one
    service: chat
    target_version: v2
    waves: [[us-east-1]]
  - name: llama-nov
    service: chat
    target_version: v2
    waves: [[mars-1]]
""",
    )
    with pytest.raises(ConfigError) as exc:
        load_policy(f)
    (reason,) = reasons_of(exc)
    assert reason == f"{f}:14: rollouts[1]: rollout 'llama-nov' names regions not serving 'chat': ['mars-1']"


def test_empty_binary_and_duplicate_key_files_are_clear_errors(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.yaml", "")
    with pytest.raises(ConfigError) as exc:
        load_policy(empty)
    assert reasons_of(exc) == [f"{empty}:1: the file is empty"]
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"zones:\n  - name: \xff\n")
    with pytest.raises(ConfigError) as exc:
        load_policy(binary)
    assert reasons_of(exc) == [f"{binary}:2: not UTF-8 (byte 0xff at offset 17)"]
    dup = write(tmp_path / "dup.yaml", ZONES + "services: []\nservices: []\n")
    with pytest.raises(ConfigError) as exc:
        load_policy(dup)
    assert "duplicate key 'services'" in reasons_of(exc)[0]


def test_problems_in_several_files_are_all_reported(tmp_path: Path, regions_dir: Path) -> None:
    pol = write(
        tmp_path / "policy.yaml",
        ZONES
        + """\
safety:
  stale_fraction: 1.5
  on_all_unhealthy: panic
services:
  - name: chat
    fqdn: chat.other.example.com
    zone: gtm.example.com
    regions: [us-east-1]
""",
    )
    write(
        regions_dir / "us-east-1.yaml",
        """\
        name: us-east-1
        jurisdiction: us
        geography:
          continent: XX
        endpoints:
          - address: 999.1.1.1
        """,
    )
    with pytest.raises(ConfigError) as exc:
        load_config(pol, regions_dir)
    reasons = reasons_of(exc)
    region_file = regions_dir / "us-east-1.yaml"
    expected_prefixes = [
        f"{region_file}:2: jurisdiction: ",
        f"{region_file}:4: geography.continent: unknown continent code 'XX'",
        f"{region_file}:6: endpoints[0]: ",
        f"{pol}:5: safety.stale_fraction: Input should be less than or equal to 1 (value: 1.5)",
        f"{pol}:6: safety.on_all_unhealthy: ",
        f"{pol}:8: services[0]: fqdn 'chat.other.example.com' is not inside zone",
    ]
    for prefix in expected_prefixes:
        assert any(r.startswith(prefix) for r in reasons), (prefix, reasons)
    assert len(reasons) == len(expected_prefixes), reasons
    assert any("(value: 'us')" in r for r in reasons)
    assert any("(value: 'panic')" in r for r in reasons)


def test_yaml_syntax_error_reported_with_line(tmp_path: Path) -> None:
    f = write(
        tmp_path / "policy.yaml",
        """\
        name: x
        zones:
          - name: gtm.example.com
            nameservers: [ns1.gtm.example.com
        services: []
        """,
    )
    with pytest.raises(ConfigError) as exc:
        load_policy(f)
    (reason,) = reasons_of(exc)
    assert reason.startswith(f"{f}:5:")
    assert "YAML syntax error" in reason


def test_yaml_syntax_error_in_region_file(regions_dir: Path) -> None:
    bad = regions_dir / "eu-west-1.yaml"
    bad.write_text("name: eu-west-1\njurisdiction: EU\n  geography: {continent: EU\n")
    with pytest.raises(ConfigError) as exc:
        load_inventory(regions_dir)
    (reason,) = reasons_of(exc)
    assert reason.startswith(f"{bad}:3:")
    assert "YAML syntax error" in reason


def test_non_mapping_policy_file(tmp_path: Path) -> None:
    f = write(tmp_path / "policy.yaml", "- just\n- a list\n")
    with pytest.raises(ConfigError) as exc:
        load_policy(f)
    assert reasons_of(exc) == [f"{f}:1: a policy file must be a mapping (got list)"]


# -- cross checks ----------------------------------------------------------------------------


def test_unknown_region_and_pin_without_eligible_region(tmp_path: Path) -> None:
    f = write(
        tmp_path / "policy.yaml",
        ZONES
        + """\
services:
  - name: chat
    fqdn: chat.gtm.example.com
    zone: gtm.example.com
    regions: [us-east-1, mars-1]
    segments:
      - name: eu
        match: {continents: [EU]}
        residency: {jurisdictions: [EU]}
""",
    )
    with pytest.raises(ConfigError) as exc:
        load_config(f, REGIONS)
    reasons = reasons_of(exc)
    assert len(reasons) == 2, reasons
    unknown, pin = reasons
    assert unknown.startswith(f"{f}: services[0].regions: ")
    assert "names unknown region 'mars-1'" in unknown
    assert pin.startswith(f"{f}: services[0].segments[0].residency: ")
    assert "pinned to ['EU']" in pin and "['us-east-1']" in pin


def test_pinned_segment_with_empty_region_list_is_reported(tmp_path: Path) -> None:
    """``regions: []`` on a segment means no region (as the engine reads it), not "all"."""
    f = write(
        tmp_path / "policy.yaml",
        ZONES
        + """\
services:
  - name: chat
    fqdn: chat.gtm.example.com
    zone: gtm.example.com
    regions: [us-east-1, eu-west-1]
    segments:
      - name: eu
        match: {continents: [EU]}
        residency: {jurisdictions: [EU]}
        regions: []
""",
    )
    with pytest.raises(ConfigError) as exc:
        load_config(f, REGIONS)
    (reason,) = reasons_of(exc)
    assert "services[0].segments[0].residency" in reason
    assert "none of its regions []" in reason


def test_region_name_must_match_file_name(regions_dir: Path) -> None:
    (regions_dir / "us-west-2.yaml").rename(regions_dir / "us-west-9.yaml")
    with pytest.raises(ConfigError) as exc:
        load_inventory(regions_dir)
    assert reasons_of(exc) == [
        f"{regions_dir / 'us-west-9.yaml'}:1: name: must equal the file name 'us-west-9' "
        "(value: 'us-west-2')"
    ]


def test_empty_regions_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_inventory(tmp_path)
    assert "no region files" in reasons_of(exc)[0]


def test_policy_split_over_files_merges_and_rejects_double_settings(tmp_path: Path) -> None:
    d = tmp_path / "policies"
    d.mkdir()
    write(d / "a.yaml", ZONES + "health:\n  fall: 3\n")
    write(
        d / "b.yaml",
        """\
        services:
          - name: chat
            fqdn: chat.gtm.example.com
            zone: gtm.example.com
            regions: [us-east-1]
        """,
    )
    policy, files = load_policy(d)
    assert policy.health.fall == 3
    assert [s.name for s in policy.services] == ["chat"]
    assert files == (str(d / "a.yaml"), str(d / "b.yaml"))
    write(d / "c.yaml", "health:\n  rise: 2\n")
    with pytest.raises(ConfigError) as exc:
        load_policy(d)
    assert reasons_of(exc) == [f"{d / 'c.yaml'}:1: health: already set in {d / 'a.yaml'}"]
    # An error in the second file's service is mapped back to that file and its own index.
    (d / "c.yaml").unlink()
    write(
        d / "b.yaml",
        """\
        services:
          - name: chat
            fqdn: chat.gtm.example.com
            zone: gtm.example.com
            ttl: -1
            regions: [us-east-1]
        """,
    )
    with pytest.raises(ConfigError) as exc:
        load_policy(d)
    assert reasons_of(exc) == [
        f"{d / 'b.yaml'}:5: services[0].ttl: Input should be greater than or equal to 0 (value: -1)"
    ]


def test_overlapping_client_networks_across_continents_are_refused(regions_dir: Path) -> None:
    f = regions_dir / "eu-west-1.yaml"
    f.write_text(f.read_text().replace("100.96.0.0/16", "100.64.128.0/17"))  # inside us-east-1's /16
    with pytest.raises(ConfigError) as exc:
        load_inventory(regions_dir)
    (reason,) = reasons_of(exc)
    assert "100.64.128.0/17 (EU) overlaps 100.64.0.0/16 of region 'us-east-1' (NA)" in reason


def test_glue_must_be_an_address(tmp_path: Path) -> None:
    f = write(tmp_path / "p.yaml", """\
zones:
  - name: gtm.example.com
    nameservers: [ns1.gtm.example.com]
    nameserver_addresses: {ns1.gtm.example.com: not-an-ip}
services:
  - name: chat
    fqdn: chat.gtm.example.com
    zone: gtm.example.com
    regions: [us-east-1]
""")
    with pytest.raises(ConfigError) as exc:
        load_policy(f)
    assert reasons_of(exc)[0].startswith(f"{f}:4: zones[0].nameserver_addresses: glue address 'not-an-ip'")
