"""Policies from Git: real repositories in tmp dirs, the loader following a ref, rejecting a broken
commit (naming it) while the last good commit stays, fetching from a "remote", the commit id in
the controller's audit entries and in status, and ``gtm plan --candidate``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gtm.cli.main import app
from gtm.config.git import GitPolicySource, load_candidate, parse_git_spec
from gtm.controller.loop import Controller, ControllerSettings
from gtm.controller.routing_diff import candidate_states, routing_diff
from gtm.controller.status import gather_status
from gtm.errors import ConfigError
from gtm.models.plan import DesiredState
from gtm.store import Store, connect
from tests.factories import T0, make_report

ROOT = Path(__file__).resolve().parents[2]
REGIONS = ("eu-central-1", "eu-west-1", "us-east-1", "us-west-2")
runner = CliRunner()


def git(repo: Path, *args: str) -> str:
    res = subprocess.run(
        ["git", "-c", "user.name=gtm-test", "-c", "user.email=gtm@example.invalid", "-c", "commit.gpgsign=false",
         "-c", "init.defaultBranch=main", "-C", str(repo), *args],
        capture_output=True, text=True, check=True,
    )
    return res.stdout.strip()


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def edit_policy(repo: Path, old: str, new: str) -> None:
    f = repo / "policies" / "default.yaml"
    text = f.read_text()
    assert old in text, old
    f.write_text(text.replace(old, new, 1))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "policy-repo"
    r.mkdir()
    git(r, "init", "-q")
    shutil.copytree(ROOT / "policies", r / "policies")
    shutil.copytree(ROOT / "regions", r / "regions")
    commit(r, "initial policy and regions")
    return r


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def source(repo: Path | str, **kw: object) -> GitPolicySource:
    kw.setdefault("regions_path", "regions")
    kw.setdefault("refresh_s", 0)
    kw.setdefault("background", False)
    return GitPolicySource(str(repo), **kw)  # type: ignore[arg-type]


def test_follows_the_ref_rejects_a_broken_commit_naming_it_then_takes_the_fix(repo: Path) -> None:
    good = git(repo, "rev-parse", "HEAD")
    # An uncommitted edit in the working tree is never read: only commits are.
    edit_policy(repo, "    ttl: 30", "    ttl: 31")
    src = source(repo, ref="main")
    cfg = src()
    assert cfg.commit == good and cfg.source == f"git:{good}" and src.commit == good
    assert cfg.policy.services[0].ttl == 30
    assert f"{good[:12]}:policies/default.yaml" in cfg.files
    git(repo, "checkout", "-q", "--", ".")

    edit_policy(repo, "    ttl: 30", "    ttl: -1")
    broken = commit(repo, "broken ttl")
    with pytest.raises(ConfigError) as exc:
        src()
    reasons = exc.value.reasons
    assert reasons and all(r.startswith(f"commit {broken[:12]} (main): ") for r in reasons), reasons
    assert any("policies/default.yaml:" in r and "ttl" in r and "-1" in r for r in reasons), reasons
    assert "gtm-git-" not in str(exc.value), "no temporary path leaks into the error"
    assert src.commit == good and src.rejected_commit == broken
    with pytest.raises(ConfigError):  # still broken: the same answer, from cache
        src()

    edit_policy(repo, "    ttl: -1", "    ttl: 45")
    fixed = commit(repo, "fix ttl")
    cfg = src()
    assert cfg.commit == fixed and src.commit == fixed and src.rejected_commit == ""
    assert cfg.policy.services[0].ttl == 45


def test_a_tag_stays_put_while_the_branch_moves_and_regions_may_be_local(repo: Path) -> None:
    v1 = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1")
    edit_policy(repo, "    ttl: 30", "    ttl: 40")
    commit(repo, "ttl 40")
    src = source(repo, ref="v1", regions_path=None, regions_dir=str(ROOT / "regions"))
    cfg = src()
    assert cfg.commit == v1 and cfg.policy.services[0].ttl == 30
    assert str(ROOT / "regions" / "eu-west-1.yaml") in cfg.files
    with pytest.raises(ConfigError, match="cannot resolve the ref"):
        source(repo, ref="no-such-branch")()
    with pytest.raises(ConfigError, match="policies-missing: not found in the commit"):
        source(repo, policies_path="policies-missing")()


def test_clone_refreshes_by_fetch_at_most_every_refresh_s_and_survives_a_dead_remote(
    repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    cache = tmp_path / "cache"
    first = git(repo, "rev-parse", "HEAD")
    src = source(repo, clone=True, cache_dir=cache, refresh_s=30, clock=clock)
    assert src()
    assert src.commit == first and (src.clone_dir / "HEAD").exists()

    edit_policy(repo, "    ttl: 30", "    ttl: 50")
    second = commit(repo, "ttl 50")
    clock.t += 10
    assert src().commit == first, "no fetch before refresh_s has passed"
    clock.t += 25
    cfg = src()
    assert cfg.commit == second and cfg.policy.services[0].ttl == 50

    # The remote disappears: fetches fail, logged once, and the last good commit stays.
    moved = tmp_path / "gone"
    repo.rename(moved)
    with caplog.at_level(logging.WARNING, logger="gtm.config.git"):
        for _ in range(3):
            clock.t += 31
            assert src().commit == second
    fetch_logs = [r for r in caplog.records if "fetch from" in r.getMessage()]
    assert len(fetch_logs) == 1, [r.getMessage() for r in caplog.records]
    assert "keeping commit " + second[:12] in fetch_logs[0].getMessage()
    moved.rename(repo)

    # A new process reuses the cached clone and fetches before reading.
    edit_policy(repo, "    ttl: 50", "    ttl: 55")
    third = commit(repo, "ttl 55")
    assert source(repo, clone=True, cache_dir=cache)().commit == third


def test_background_fetch_picks_up_a_new_commit(repo: Path, tmp_path: Path) -> None:
    clock = Clock()
    src = source(repo, clone=True, cache_dir=tmp_path / "cache", refresh_s=5, clock=clock, background=True)
    first = src().commit
    edit_policy(repo, "    ttl: 30", "    ttl: 33")
    second = commit(repo, "ttl 33")
    clock.t += 6
    assert src().commit in (first, second)  # the fetch runs in a thread; the call does not wait
    src.wait_fetch(10)
    assert src().commit == second


def test_parse_git_spec() -> None:
    assert parse_git_spec("/srv/policies@release") == parse_git_spec("/srv/policies@release", default_ref="x")
    assert parse_git_spec("/srv/policies").ref == "HEAD"
    assert parse_git_spec("git@github.com:org/policies.git").repo == "git@github.com:org/policies.git"
    spec = parse_git_spec("git@github.com:org/policies.git@main")
    assert (spec.repo, spec.ref) == ("git@github.com:org/policies.git", "main")
    assert parse_git_spec("origin/main", ref_only_default_repo=".").repo == "."
    assert parse_git_spec("HEAD@{1}", ref_only_default_repo=".").ref == "HEAD@{1}"
    with pytest.raises(ConfigError):
        parse_git_spec("repo@--upload-pack=evil")


# -- the controller -------------------------------------------------------------------------


class RecordingPublisher:
    name = "recorder"

    async def publish(self, state: DesiredState) -> bool:
        return True


async def put_healthy(store: Store, now: float) -> None:
    for region in REGIONS:
        # Within what the example inventory allows (2 replicas and more per region).
        await store.put_report(make_report(region, now, spare=2.0, models={"llama-3.1-8b": 2.0}), ttl_s=60,
                               changed=True)


@pytest.mark.usefixtures("loop_watchdog")
async def test_controller_audit_and_status_carry_the_commit(repo: Path) -> None:
    # The controller's reload runs ``git`` (rev-parse, ls-tree, cat-file) off its event loop,
    # which the watchdog checks; the test's own git commands run in a thread for the same reason.
    store = connect("embedded://", ns="git-audit")
    clock = Clock()
    clock.t = T0
    src = source(repo, ref="main")
    ctl = Controller(store, src, [RecordingPublisher()], ControllerSettings(owner="a"), clock=clock)
    try:
        c1 = await asyncio.to_thread(git, repo, "rev-parse", "HEAD")
        await put_healthy(store, clock.t)
        await ctl.cycle()
        audit = await store.read_audit(10)
        assert len(audit) == 1 and audit[0][1]["policy_commit"] == c1

        edit_policy(repo, "us-east-1: 200", "us-east-1: 100")
        c2 = await asyncio.to_thread(commit, repo, "embed: less us-east-1")
        clock.t += 1
        await put_healthy(store, clock.t)
        await ctl.cycle()
        audit = await store.read_audit(10)
        assert [e[1]["policy_commit"] for e in audit] == [c2, c1]
        assert ctl.config is not None and ctl.config.commit == c2

        edit_policy(repo, "    ttl: 30", "    ttl: -1")
        c3 = await asyncio.to_thread(commit, repo, "broken")
        clock.t += 1
        await put_healthy(store, clock.t)
        await ctl.cycle()
        assert ctl.config.commit == c2, "the last good commit stays in force"
        assert ctl.stats.config_errors == 1 and c3[:12] in ctl.stats.last_error

        status = await gather_status(store, ctl.config, now=clock.t)
        assert status["policy_commit"] == c2
        assert status["desired"]["policy_commit"] == c2
    finally:
        await store.aclose()


async def test_candidate_states_from_the_store(repo: Path) -> None:
    store = connect("embedded://", ns="git-candidate")
    try:
        await put_healthy(store, T0)
        in_force = source(repo)()
        edit_policy(repo, "us-east-1: 200", "us-east-1: 120")
        cand = load_candidate(f"{repo}@HEAD", regions_path="regions")
        before, after = await candidate_states(store, in_force, cand, T0)
        weight = [c for c in routing_diff(before, after) if c.kind == "weight"]
        assert [(c.fqdn, c.region, c.before, c.after) for c in weight] == []  # uncommitted: not a candidate
        cand = load_candidate(str(repo / "policies"), regions_dir=str(repo / "regions"))
        before, after = await candidate_states(store, in_force, cand, T0)
        weight = [c for c in routing_diff(before, after) if c.kind == "weight"]
        assert [(c.fqdn, c.region, c.before, c.after) for c in weight] == [
            ("embed.gtm.example.com", "us-east-1", 200, 120)
        ]
    finally:
        await store.aclose()


# -- the command line -------------------------------------------------------------------------


def gtm(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, [*args], catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


def test_plan_candidate_shows_exactly_the_routing_changes(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "candidate")
    # Drains nothing; changes one static weight and takes us-west-2 out of the chat service.
    edit_policy(repo, "us-east-1: 200", "us-east-1: 100")
    edit_policy(repo, "regions: [us-east-1, us-west-2, eu-west-1, eu-central-1]",
                "regions: [us-east-1, eu-west-1, eu-central-1]")
    # ...and from the example rollout's waves, or the candidate would not validate.
    edit_policy(repo, "waves: [[eu-central-1], [us-west-2], [eu-west-1, us-east-1]]",
                "waves: [[eu-central-1], [eu-west-1, us-east-1]]")
    cand = commit(repo, "candidate")
    common = ["plan", "--policies-git", f"{repo}@main", "--regions", str(repo / "regions"), "--assume-healthy"]

    code, out, _ = gtm(*common, "--candidate", f"{repo}@candidate", "-o", "json", "--exit-code")
    assert code == 4
    doc = json.loads(out)
    assert doc["differs"] is True
    assert doc["in_force"]["commit"] == base and doc["candidate"]["commit"] == cand
    weights = [(c["fqdn"], c["segment"], c["region"], c["before"], c["after"]) for c in doc["changes"]
               if c["kind"] == "weight"]
    assert weights == [
        ("chat.gtm.example.com", "default", "us-west-2", 255, None),
        ("embed.gtm.example.com", "default", "us-east-1", 200, 100),
    ]
    others = sorted(c["kind"] for c in doc["changes"] if c["kind"] not in ("weight", "announcement"))
    assert others == ["pool-added", "pool-added", "pool-removed", "pool-removed"]
    # The service's anycast prefix is no longer announced from the region it left.
    anycast = [(c["detail"], c["region"], c["before"], c["after"])
               for c in doc["changes"] if c["kind"] == "announcement"]
    assert anycast == [("203.0.113.0/24", "us-west-2", "announce +0 MED 0", None)]

    code, out, _ = gtm(*common, "--candidate", f"{repo}@candidate")
    assert code == 0, "without --exit-code a difference is not an error"
    assert "embed.gtm.example.com/default: us-east-1 200 (78%) → 100 (65%) (loses weight)" in out
    assert "chat.gtm.example.com/default: us-west-2 255 (25%) → absent (left the pool)" in out

    code, out, _ = gtm(*common, "--candidate", f"{repo}@main", "--exit-code")
    assert code == 0 and "no routing difference" in out

    edit_policy(repo, "    ttl: 30", "    ttl: -1")
    broken = commit(repo, "broken")
    code, _, err = gtm(*common, "--candidate", f"git:{repo}@candidate")
    assert code == 2 and f"commit {broken[:12]}" in err


def test_plan_candidate_needs_fresh_inputs_or_assume_healthy(repo: Path) -> None:
    code, _, err = gtm("plan", "--redis", "embedded://", "--policies", str(repo / "policies"),
                       "--regions", str(repo / "regions"), "--candidate", str(repo / "policies"))
    assert code == 1 and "--assume-healthy" in err


def test_controller_refuses_policies_and_policies_git_together(repo: Path) -> None:
    code, _, err = gtm("controller", "--policies", "policies", "--policies-git", str(repo))
    assert code == 2 and "mutually exclusive" in err
