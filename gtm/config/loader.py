"""Load and validate the region inventory and policy files.

Every problem is reported at once (one ``ConfigError`` carrying all reasons), each reason as
``file:line: field.path: message (value: ...)`` so an operator can fix a file in one pass.
Nothing here mutates state: a caller that gets ``ConfigError`` keeps what it had.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from gtm.config.anycast import anycast_reasons
from gtm.config.publish import publish_reasons
from gtm.errors import ConfigError
from gtm.models.policy import Policy
from gtm.models.region import Inventory, Region

_YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Config:
    """A validated policy with the inventory it was checked against.

    Attributes:
        policy: the policy.
        inventory: the regions.
        digest: ``sha256:<hex>`` of the policy and inventory as parsed (canonical JSON).
        files: the files read.
        source: where it came from: ``git:<commit sha>`` (``gtm.config.git``), else ``""`` (files).
        warnings: legal but costly settings (``policy_warnings``), each ``file: field: message``.
    """

    policy: Policy
    inventory: Inventory
    digest: str
    files: tuple[str, ...]
    source: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def commit(self) -> str:
        """The Git commit id the policy was read from, or ``""`` when not read from Git."""
        return self.source.removeprefix("git:") if self.source.startswith("git:") else ""


def _yaml_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in _YAML_SUFFIXES and p.is_file())
    return [path]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (first at line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """Parse one file; returns (data, node tree for line lookups). Raises ConfigError."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{path}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"]) from exc
    if not text.strip():
        raise ConfigError([f"{path}:1: the file is empty"])
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: YAML syntax error: {problem}"]) from exc
    return data, node


def _line_of(node: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """Line (1-based) of the deepest YAML node on the path ``loc``."""
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    nxt = v
                    line = k.start_mark.line + 1
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if 0 <= part < len(node.value) else None
            if node is not None:
                line = node.start_mark.line + 1
        else:
            break
        if node is None:
            break
    return line


def _fmt_loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _real_errors(exc: ValidationError) -> list[Any]:
    """Errors minus a list's "too short" that only echoes its items' own failures."""
    errors = exc.errors()
    return [
        e
        for e in errors
        if not (e["type"] == "too_short" and isinstance(e["input"], (list, tuple)) and e["input"])
    ]


_NAMED = {"rollout": "rollouts", "service": "services", "provider": "providers"}


def _named_entry(data: Any, msg: str) -> list[int | str]:
    """For a whole-document error such as "rollout 'x' names ...": the path of that entry
    (``["rollouts", 0]``), or [] when the message names none."""
    m = re.match(r"(rollout|service|provider) '([^']+)'", msg)
    items = data.get(_NAMED[m.group(1)]) if m and isinstance(data, dict) else None
    if not isinstance(items, list):
        return []
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == m.group(2):  # type: ignore[union-attr]
            return [_NAMED[m.group(1)], i]  # type: ignore[union-attr]
    return []


def _validation_reasons(
    path: Path, node: yaml.Node | None, exc: ValidationError, prefix: Sequence[int | str] = ()
) -> list[str]:
    reasons = []
    for err in _real_errors(exc):
        loc = [p for p in (*prefix, *err["loc"]) if not (isinstance(p, str) and p.startswith("function-"))]
        msg = err["msg"].removeprefix("Value error, ")
        whole = not err["loc"]  # a check across the document: its input is the whole document
        if whole:
            loc = [*loc, *_named_entry(err["input"], msg)]
        line = _line_of(node, loc)
        where = f"{path}:{line}" if line else str(path)
        value = f" (value: {_short(err['input'])})" if err["type"] != "missing" and not whole else ""
        reasons.append(f"{where}: {_fmt_loc(loc)}: {msg}{value}")
    return reasons


def load_inventory(path: str | Path) -> Inventory:
    """Read every ``*.yaml`` region file under ``path`` (a directory or one file).

    Raises:
        ConfigError: with every problem found (file, line, field, value).
    """
    reasons: list[str] = []
    regions: dict[str, Region] = {}
    files = _yaml_files(Path(path))
    if not files:
        raise ConfigError([f"{path}: no region files (*.yaml) found"])
    for f in files:
        try:
            data, node = _read_yaml(f)
        except ConfigError as exc:
            reasons.extend(exc.reasons)
            continue
        if not isinstance(data, dict):
            reasons.append(f"{f}:1: a region file must be a mapping (got {type(data).__name__})")
            continue
        try:
            region = Region.model_validate(data)
        except ValidationError as exc:
            reasons.extend(_validation_reasons(f, node, exc))
            continue
        if region.name != f.stem:
            line = _line_of(node, ["name"])
            reasons.append(f"{f}:{line}: name: must equal the file name {f.stem!r} (value: {region.name!r})")
        if region.name in regions:
            reasons.append(f"{f}: region {region.name!r} defined twice")
        regions[region.name] = region
    reasons.extend(_network_conflicts(regions))
    if reasons:
        raise ConfigError(reasons)
    return Inventory(regions=regions)


def _network_conflicts(regions: dict[str, Region]) -> list[str]:
    """Client networks that overlap across regions on different continents.

    The prefix → geography table decides which segment (and so which residency pin) a client
    falls in; two continents claiming the same addresses would make that a coin toss.
    """
    nets = [
        (ipaddress.ip_network(n, strict=False), name, r.geography.continent)
        for name, r in sorted(regions.items())
        for n in r.geography.client_networks
    ]
    out = []
    for i, (a, ra, ca) in enumerate(nets):
        for b, rb, cb in nets[i + 1 :]:
            if ca != cb and a.version == b.version and a.overlaps(b):
                out.append(
                    f"regions/{ra}.yaml: geography.client_networks: {a} ({ca}) overlaps {b} of region "
                    f"{rb!r} ({cb}): a client there would have no single location"
                )
    return out


def load_policy(paths: str | Path | Iterable[str | Path]) -> tuple[Policy, tuple[str, ...]]:
    """Read a policy from one file, a directory of files, or several files.

    Several files are merged: ``zones`` and ``services`` are concatenated; ``name``,
    ``health`` and ``safety`` may be set by at most one file.

    Returns:
        ``(policy, files read)``.

    Raises:
        ConfigError: with every problem found.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = [f for p in paths for f in _yaml_files(Path(p))]
    if not files:
        raise ConfigError([f"{', '.join(map(str, paths))}: no policy files (*.yaml) found"])
    reasons: list[str] = []
    merged: dict[str, Any] = {"zones": [], "services": []}
    origin: dict[str, Path] = {}
    per_file: list[tuple[Path, yaml.Node | None, dict[str, Any]]] = []
    for f in files:
        try:
            data, node = _read_yaml(f)
        except ConfigError as exc:
            reasons.extend(exc.reasons)
            continue
        if data is None:
            continue
        if not isinstance(data, dict):
            reasons.append(f"{f}:1: a policy file must be a mapping (got {type(data).__name__})")
            continue
        per_file.append((f, node, data))
        for key, value in data.items():
            if key in ("zones", "services"):
                if not isinstance(value, list):
                    line = _line_of(node, [key])
                    reasons.append(f"{f}:{line}: {key}: must be a list (value: {_short(value)})")
                    continue
                merged[key].extend(value)
            elif key in origin:
                line = _line_of(node, [key])
                reasons.append(f"{f}:{line}: {key}: already set in {origin[key]}")
            else:
                origin[key] = f
                merged[key] = value
    if reasons:
        raise ConfigError(reasons)
    if not per_file:
        raise ConfigError([f"{', '.join(str(f) for f in files)}: no policy content (only comments?)"])
    try:
        policy = Policy.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_map_merged_errors(per_file, exc)) from exc
    return policy, tuple(str(f) for f in files)


def _map_merged_errors(
    per_file: list[tuple[Path, yaml.Node | None, dict[str, Any]]], exc: ValidationError
) -> list[str]:
    """Translate errors on the merged document back to (file, index within that file)."""
    offsets: dict[str, list[tuple[int, Path, yaml.Node | None]]] = {"zones": [], "services": []}
    counts = {"zones": 0, "services": 0}
    owner: dict[str, tuple[Path, yaml.Node | None]] = {}
    for f, node, data in per_file:
        for key in ("zones", "services"):
            if isinstance(data.get(key), list):
                offsets[key].append((counts[key], f, node))
                counts[key] += len(data[key])
        for key in data:
            owner.setdefault(key, (f, node))
    reasons: list[str] = []
    for err in _real_errors(exc):
        loc = list(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        whole = not loc  # a check across the document: point at the entry it names, if any
        if whole:
            loc = _named_entry(err["input"], msg)
        f, node = per_file[0][0], per_file[0][1]
        if loc and loc[0] in offsets and len(loc) > 1 and isinstance(loc[1], int):
            local = loc[1]
            for start, fp, nd in offsets[str(loc[0])]:
                if loc[1] >= start:
                    f, node, local = fp, nd, loc[1] - start
            loc = [loc[0], local, *loc[2:]]
        elif loc and str(loc[0]) in owner:
            f, node = owner[str(loc[0])]
        line = _line_of(node, loc)
        where = f"{f}:{line}" if line else str(f)
        value = f" (value: {_short(err['input'])})" if err["type"] != "missing" and not whole else ""
        reasons.append(f"{where}: {_fmt_loc(loc)}: {msg}{value}")
    return reasons


def cross_check(policy: Policy, inventory: Inventory) -> list[str]:
    """Checks that need both policy and inventory; returns one reason per problem.

    Residency: a pinned segment that lists its own ``regions:`` must list only regions in its
    jurisdictions (or in its ``spill_to`` jurisdictions, which it may spill to): the engine
    would silently drop any other, so writing one is a mistake and is refused, naming the
    segment, the region and both jurisdictions. A pinned segment WITHOUT its own ``regions:``
    inherits the service's regions and serves those in its jurisdictions: that is how the EU
    segment of a global service is written (``policies/default.yaml``), so dropping the others
    there is the meaning, not an error. Either way a pin with no eligible region is refused.
    What DNS would hold is checked by ``gtm.config.publish.publish_reasons``.
    """
    reasons: list[str] = []
    known = inventory.regions
    for i, svc in enumerate(policy.services):
        for r in svc.regions:
            if r not in known:
                reasons.append(
                    f"services[{i}].regions: service {svc.name!r} names unknown region {r!r} "
                    f"(known: {sorted(known)})"
                )
        for j, seg in enumerate(svc.all_segments):
            if seg.residency is None:
                continue
            pins = seg.residency.jurisdictions
            for k, r in enumerate(seg.regions or ()):
                if r in known and known[r].jurisdiction not in (*pins, *seg.spill_to):
                    reasons.append(
                        f"services[{i}].segments[{j}].regions[{k}]: segment {seg.name!r} of {svc.name!r} is pinned "
                        f"to jurisdictions {list(pins)} but lists region {r!r}, whose jurisdiction is "
                        f"{known[r].jurisdiction!r} (regions/{r}.yaml); it would never be routed to: remove it "
                        f"or widen the pin (value: {r!r})"
                    )
            # As the engine does (gtm.engine.residency): an empty list means no region at all.
            listed = seg.regions if seg.regions is not None else svc.regions
            pool = [r for r in listed if r in known]
            eligible = [r for r in pool if known[r].jurisdiction in pins]
            if not eligible:
                reasons.append(
                    f"services[{i}].segments[{j}].residency: segment {seg.name!r} of "
                    f"{svc.name!r} is pinned to {list(pins)} but none of "
                    f"its regions {list(pool)} is in those jurisdictions"
                )
    reasons.extend(anycast_reasons(policy, inventory))
    reasons.extend(publish_reasons(policy, inventory))
    return reasons


def policy_warnings(policy: Policy) -> list[str]:
    """Legal but costly settings, one line each (``gtm policy validate`` prints them).

    - ``ttl: 0``: no resolver may cache the answer, so every client lookup reaches the
      authoritative servers (query load and latency scale with clients, not resolvers), and
      some resolvers raise a 0 TTL to their own minimum anyway.
    """
    return [
        f"services[{i}].ttl: service {svc.name!r} has ttl 0: resolvers cannot cache its answers, every client "
        "lookup reaches the authoritative servers (and some resolvers clamp 0 to their own minimum) (value: 0)"
        for i, svc in enumerate(policy.services)
        if svc.ttl == 0 and "dns" in svc.planes
    ]


def policy_digest(policy: Policy, inventory: Inventory) -> str:
    """``sha256:<hex>`` of the canonical JSON of policy and inventory."""
    blob = json.dumps(
        {"policy": _dump(policy), "inventory": _dump(inventory)}, sort_keys=True, default=str
    )
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def _dump(model: BaseModel) -> Any:
    return model.model_dump(mode="json")


def load_config(policy_paths: str | Path | Iterable[str | Path], regions_path: str | Path) -> Config:
    """Load, validate and cross-check a policy against an inventory.

    Raises:
        ConfigError: every problem in every file, at once.
    """
    reasons: list[str] = []
    inventory: Inventory | None = None
    policy: Policy | None = None
    files: tuple[str, ...] = ()
    try:
        inventory = load_inventory(regions_path)
    except ConfigError as exc:
        reasons.extend(exc.reasons)
    try:
        policy, files = load_policy(policy_paths)
    except ConfigError as exc:
        reasons.extend(exc.reasons)
    if policy is not None and inventory is not None:
        reasons.extend(f"{files[0] if len(files) == 1 else 'policy'}: {r}" for r in cross_check(policy, inventory))
    if reasons or policy is None or inventory is None:
        raise ConfigError(reasons)
    return Config(
        policy=policy,
        inventory=inventory,
        digest=policy_digest(policy, inventory),
        files=files + tuple(str(p) for p in _yaml_files(Path(regions_path))),
        warnings=tuple(f"{files[0] if len(files) == 1 else 'policy'}: {w}" for w in policy_warnings(policy)),
    )
