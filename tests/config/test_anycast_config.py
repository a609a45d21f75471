"""Anycast in the policy files: prefixes, data planes, and the cross-check against the regions'
BGP sides; every problem with file, line, field and value."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from gtm.config import load_config
from gtm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
REGIONS = ROOT / "regions"

HEAD = """\
zones:
  - name: gtm.example.com
    nameservers: [ns1.gtm.example.com]
services:
"""


def service(name: str, extra: str = "", segments: str = "") -> str:
    text = f"""\
  - name: {name}
    fqdn: {name}.gtm.example.com
    zone: gtm.example.com
    regions: [us-east-1, us-west-2, eu-west-1, eu-central-1]
"""
    for line in textwrap.dedent(extra).splitlines():
        text += f"    {line}\n"
    if segments:
        text += "    segments:\n"
        for line in textwrap.dedent(segments).splitlines():
            text += f"      {line}\n"
    return text


def load(tmp_path: Path, *services: str, regions: Path = REGIONS) -> list[str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(HEAD + "".join(services), encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(policy, regions)
    return exc.value.reasons


def test_the_examples_name_prefixes_and_bgp_sides() -> None:
    cfg = load_config(ROOT / "policies", REGIONS)
    chat = next(s for s in cfg.policy.services if s.name == "chat")
    assert chat.planes == frozenset({"dns", "anycast"})
    assert [(p, seg.name) for p, seg in chat.prefix_segments()] == [
        ("198.51.100.0/24", "eu"), ("203.0.113.0/24", "default")]
    assert all(r.bgp is not None for r in cfg.inventory.regions.values())


def test_a_prefix_with_host_bits_is_refused_with_its_location(tmp_path: Path) -> None:
    reasons = load(tmp_path, service("chat", "anycast: {prefix: 198.51.100.7/24}"))
    assert len(reasons) == 1, reasons
    assert reasons[0].startswith(f"{tmp_path / 'policy.yaml'}:9: services[0].anycast.prefix: ")
    assert "host bits set" in reasons[0] and "198.51.100.0/24" in reasons[0] and "'198.51.100.7/24'" in reasons[0]


def test_a_prefix_used_by_two_services_is_refused(tmp_path: Path) -> None:
    reasons = load(tmp_path, service("chat", "anycast: {prefix: 198.51.100.0/24}"),
                   service("embed", "anycast: {prefix: 198.51.100.0/24}"))
    assert any("services[1]" in r and "198.51.100.0/24" in r and "is also used by service 'chat'" in r
               for r in reasons), reasons


def test_overlapping_prefixes_are_refused(tmp_path: Path) -> None:
    reasons = load(tmp_path, service("chat", "anycast: {prefix: 198.51.100.0/24}"),
                   service("embed", "anycast: {prefix: 198.51.100.128/25}"))
    assert any("198.51.100.128/25" in r and "overlaps 198.51.100.0/24 of service 'chat'" in r for r in reasons), reasons


def test_data_planes_must_match_the_prefixes(tmp_path: Path) -> None:
    reasons = load(tmp_path, service("chat", "data_planes: [dns, anycast]"))
    assert any("services[0]" in r and "no prefix is named" in r for r in reasons), reasons
    reasons = load(tmp_path, service("chat", "anycast: {prefix: 198.51.100.0/24}\ndata_planes: [dns]"))
    assert any("leaves anycast out" in r for r in reasons), reasons
    reasons = load(tmp_path, service("chat", "data_planes: []"))
    assert any("data_planes" in r and "unreachable" in r for r in reasons), reasons


def test_an_anycast_only_pinned_segment_needs_its_own_prefix(tmp_path: Path) -> None:
    segs = """\
    - name: eu
      match: {continents: [EU]}
      residency: {jurisdictions: [EU]}
    - name: default
    """
    reasons = load(tmp_path, service("chat", "anycast: {prefix: 203.0.113.0/24}\ndata_planes: [anycast]", segs))
    assert any("anycast-only service: segment 'eu' is pinned" in r for r in reasons), reasons


def test_a_prefix_no_region_can_announce_is_refused(tmp_path: Path) -> None:
    regions = tmp_path / "regions"
    shutil.copytree(REGIONS, regions)
    for name in ("eu-west-1", "eu-central-1"):
        doc = yaml.safe_load((regions / f"{name}.yaml").read_text())
        del doc["bgp"]
        (regions / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    segs = """\
    - name: eu
      match: {continents: [EU]}
      residency: {jurisdictions: [EU]}
      anycast: {prefix: 198.51.100.0/24}
    - name: default
    """
    reasons = load(tmp_path, service("chat", "anycast: {prefix: 203.0.113.0/24}", segs), regions=regions)
    assert len(reasons) == 1, reasons
    assert "services[0].segments[0].anycast" in reasons[0]
    assert "announces 198.51.100.0/24 for segment 'eu'" in reasons[0]
    assert "allowed by its residency pin ['EU'] has a bgp side" in reasons[0]


def test_an_anycast_only_service_loads(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(HEAD + service("edge", "anycast: {prefix: 203.0.113.0/24}\ndata_planes: [anycast]"))
    cfg = load_config(policy, REGIONS)
    assert cfg.policy.services[0].planes == frozenset({"anycast"})
