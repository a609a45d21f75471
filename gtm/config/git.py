"""Policies (and optionally regions) from a Git repository at a ref.

``GitPolicySource`` is a ``config_loader`` for the controller: each call returns the ``Config``
of the commit the ref points at. The files are read from the commit object itself (``git
ls-tree`` / ``git cat-file`` into a private temporary directory), never from a working tree,
so uncommitted edits in a checkout are never served.

Two kinds of repository:

- **local**: a path to a repository or a worktree. The ref is resolved there.
- **clone**: a URL (``https://``, ``ssh://``, ``file://``, ``user@host:path``), or any path with
  ``clone=True``. A bare clone is kept under a cache directory and refreshed with ``git fetch``
  at most every ``refresh_s`` seconds, bounded by ``timeout_s``. A failed fetch keeps the
  commits already fetched (so the last good commit stays in force) and is logged once until a
  fetch succeeds again.

A new commit is validated with ``load_config`` before it takes effect. A commit that does not
validate raises ``ConfigError`` whose every reason starts with ``commit <sha12> (<ref>):`` and
names the file inside the repository; the controller then keeps its last good config, and
``commit`` here keeps naming the last good commit (``rejected_commit`` the bad one). The
config carries ``source="git:<sha>"`` (``Config.commit``).

Only the ``git`` command line is used, always with argument lists (no shell), with
``--literal-pathspecs``, refs refused when they start with ``-``, and terminal prompts off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gtm.config.loader import Config, load_config
from gtm.errors import ConfigError, GitError
from gtm.log import get_logger

log = get_logger("config.git")

DEFAULT_REFRESH_S = 30.0
DEFAULT_TIMEOUT_S = 20.0
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9._-]+:")


@dataclass(frozen=True)
class GitSpec:
    """A repository and a ref in it."""

    repo: str
    ref: str

    def __str__(self) -> str:
        return f"{self.repo}@{self.ref}"


def is_url(repo: str) -> bool:
    """Whether ``repo`` names a remote (``scheme://`` or scp-like ``user@host:path``)."""
    return "://" in repo or bool(_SCP_LIKE.match(repo))


def parse_git_spec(spec: str, *, ref_only_default_repo: str | None = None, default_ref: str = "HEAD") -> GitSpec:
    """Split ``REPO@REF`` at its last ``@``.

    Without an ``@`` (or when what follows it cannot be a ref: ``HEAD@{1}``, ``user@host:x``),
    the whole spec is the repository and the ref is ``default_ref`` -- unless
    ``ref_only_default_repo`` is given, in which case the spec is a ref in that repository
    (``gtm plan --candidate main`` means ``.@main``).

    Raises:
        ConfigError: empty repository or ref, or a ref starting with ``-``.
    """
    spec = spec.strip()
    head, sep, tail = spec.rpartition("@")
    if sep and head and tail and not tail.startswith("{") and ":" not in tail:
        repo, ref = head, tail
    elif ref_only_default_repo is not None:
        repo, ref = ref_only_default_repo, spec
    else:
        repo, ref = spec, default_ref
    if not repo or not ref:
        raise ConfigError([f"git: {spec!r}: expected REPO@REF"])
    if ref.startswith("-") or repo.startswith("-"):
        raise ConfigError([f"git: {spec!r}: a repository or ref may not start with '-'"])
    return GitSpec(repo, ref)


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY"):
        env.pop(var, None)
    return env


def run_git(args: Sequence[str], *, git_dir: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:
    """Run ``git [--git-dir=...] --literal-pathspecs ARGS``; returns stdout.

    Raises:
        GitError: non-zero exit, timeout, or no ``git`` executable.
    """
    cmd = ["git", "--literal-pathspecs"]
    if git_dir is not None:
        cmd.append(f"--git-dir={git_dir}")
    cmd.extend(args)
    try:
        res = subprocess.run(
            cmd, capture_output=True, timeout=timeout_s, env=_git_env(), stdin=subprocess.DEVNULL, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"git {args[0]} timed out after {timeout_s:g}s") from exc
    except OSError as exc:
        raise GitError(f"cannot run git: {exc}") from exc
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip().splitlines()
        raise GitError(f"git {args[0]} failed: {err[-1] if err else f'exit {res.returncode}'}")
    return res.stdout


def resolve_commit(git_dir: str, ref: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """The full commit id ``ref`` points at.

    Raises:
        GitError: unknown ref.
    """
    if ref.startswith("-"):
        raise GitError(f"ref {ref!r} may not start with '-'")
    out = run_git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], git_dir=git_dir, timeout_s=timeout_s)
    sha = out.decode().strip()
    if not sha:
        raise GitError(f"ref {ref!r} not found")
    return sha


def _materialise(git_dir: str, sha: str, path: str, dest: Path, timeout_s: float) -> int:
    """Write the blobs under ``path`` in commit ``sha`` to ``dest/path``; returns how many."""
    out = run_git(["ls-tree", "-r", "-z", "--full-tree", sha, "--", path], git_dir=git_dir, timeout_s=timeout_s)
    n = 0
    for entry in out.split(b"\0"):
        if not entry:
            continue
        meta, _, name = entry.partition(b"\t")
        mode, kind, oid = meta.decode().split(" ")
        rel = PurePosixPath(name.decode("utf-8", errors="surrogateescape"))
        if kind != "blob" or mode not in ("100644", "100755") or rel.is_absolute() or ".." in rel.parts:
            continue  # symlinks, submodules and anything odd are not policy files
        blob = run_git(["cat-file", "blob", oid], git_dir=git_dir, timeout_s=timeout_s)
        target = dest.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
        n += 1
    return n


def load_config_at_commit(
    git_dir: str,
    sha: str,
    *,
    policies_path: str = "policies",
    regions_path: str | None = None,
    regions_dir: str | None = None,
    label: str = "",
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Config:
    """Validate the policy of one commit (regions from the commit or from a local directory).

    Args:
        git_dir: the repository's git directory.
        sha: a full commit id.
        policies_path: file or directory inside the repository.
        regions_path: inventory directory inside the repository, or None to use ``regions_dir``.
        regions_dir: local inventory directory (used when ``regions_path`` is None).
        label: how the ref is named in errors (``main``).

    Returns:
        the config, with ``source="git:<sha>"`` and files named ``<sha12>:<path>``.

    Raises:
        ConfigError: every reason prefixed ``commit <sha12> (<label>):``.
    """
    short = sha[:12]
    prefix = f"commit {short}" + (f" ({label})" if label else "") + ": "
    if regions_path is None and regions_dir is None:
        raise ConfigError([prefix + "no regions: give a path in the repository or a local directory"])
    with tempfile.TemporaryDirectory(prefix="gtm-git-") as tmp:
        root = Path(tmp)
        missing = []
        try:
            wanted = [policies_path] + ([regions_path] if regions_path is not None else [])
            for p in wanted:
                if _materialise(git_dir, sha, p.strip("/"), root, timeout_s) == 0:
                    missing.append(f"{prefix}{p}: not found in the commit")
        except GitError as exc:
            raise ConfigError([f"{prefix}cannot read the commit: {exc}"]) from exc
        if missing:
            raise ConfigError(missing)
        regions = str(root / regions_path.strip("/")) if regions_path is not None else str(regions_dir)
        try:
            cfg = load_config(root / policies_path.strip("/"), regions)
        except ConfigError as exc:
            raise ConfigError([prefix + r.replace(tmp + os.sep, "") for r in exc.reasons]) from exc
    files = tuple(f"{short}:{f[len(tmp) + 1:]}" if f.startswith(tmp + os.sep) else f for f in cfg.files)
    return dataclasses.replace(cfg, files=files, source=f"git:{sha}")


def default_cache_dir() -> Path:
    """``$GTM_GIT_CACHE``, else ``$XDG_CACHE_HOME/gtm/git``, else ``~/.cache/gtm/git``."""
    if os.environ.get("GTM_GIT_CACHE"):
        return Path(os.environ["GTM_GIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gtm" / "git"


def _local_fingerprint(path: str | None) -> tuple[tuple[str, int, int], ...]:
    if path is None:
        return ()
    p = Path(path)
    files = sorted(p.iterdir()) if p.is_dir() else [p]
    out = []
    for f in files:
        try:
            st = f.stat()
            out.append((str(f), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(f), -1, -1))
    return tuple(out)


class GitPolicySource:
    """A controller ``config_loader`` reading policies from a Git ref.

    Args:
        repo: a local repository/worktree path, or a URL to clone.
        ref: branch, tag or commit (default ``HEAD``: the checkout's, or the remote's default branch).
        policies_path: policy file or directory inside the repository.
        regions_path: inventory directory inside the repository (None: use ``regions_dir``).
        regions_dir: local inventory directory, when the regions are not in the repository.
        refresh_s: the ref is re-resolved (and, for a clone, fetched) at most this often.
        timeout_s: bound on each git command (fetch and clone included).
        clone: True to clone even a local path, False never to; None: clone URLs only.
        cache_dir: where clones live (``default_cache_dir()``).
        background: fetch in a background thread so a call never waits on the network (the
            first clone is always synchronous). False: fetch inline (tests, one-shot use).
        clock: monotonic seconds (injectable for tests).

    Attributes:
        commit: the last good commit id ("" before the first good load).
        rejected_commit: the last commit that failed validation ("" if none since the last good).
        last_error: the last problem (validation or fetch), "" if none.
    """

    def __init__(
        self,
        repo: str,
        ref: str = "HEAD",
        *,
        policies_path: str = "policies",
        regions_path: str | None = None,
        regions_dir: str | None = None,
        refresh_s: float = DEFAULT_REFRESH_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clone: bool | None = None,
        cache_dir: str | Path | None = None,
        background: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ref.startswith("-") or repo.startswith("-"):
            raise ConfigError([f"git: {repo}@{ref}: a repository or ref may not start with '-'"])
        if regions_path is None and regions_dir is None:
            raise ConfigError([f"git: {repo}: give regions_path (in the repository) or regions_dir (local)"])
        self.repo = repo
        self.ref = ref
        self.policies_path = policies_path
        self.regions_path = regions_path
        self.regions_dir = regions_dir
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self.cloned = is_url(repo) if clone is None else clone
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.background = background
        self.clock = clock
        self.commit = ""
        self.rejected_commit = ""
        self.last_error = ""
        self._git_dir: str | None = None
        self._lock = threading.Lock()
        self._fetcher: threading.Thread | None = None
        self._fetch_failing = False
        self._next_check = 0.0
        self._key: tuple[object, ...] | None = None
        self._result: Config | ConfigError | None = None

    def __repr__(self) -> str:
        return f"GitPolicySource({self.repo!r}@{self.ref!r}, commit={self.commit[:12] or '-'})"

    # -- repository ---------------------------------------------------------------------------

    @property
    def clone_dir(self) -> Path:
        """Where the clone of ``repo`` lives (clone mode only)."""
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", self.repo.rstrip("/").rsplit("/", 1)[-1])[:40] or "repo"
        return self.cache_dir / f"{name}-{hashlib.sha256(self.repo.encode()).hexdigest()[:16]}.git"

    def _ensure_repo(self) -> str:
        """The git directory to read from, cloning first if needed. Raises ConfigError."""
        if self._git_dir is not None:
            return self._git_dir
        if not self.cloned:
            if not Path(self.repo).exists():
                raise ConfigError([f"git: {self.repo}: no such repository"])
            try:
                out = run_git(["-C", self.repo, "rev-parse", "--absolute-git-dir"], timeout_s=self.timeout_s)
            except GitError as exc:
                raise ConfigError([f"git: {self.repo}: not a Git repository ({exc})"]) from exc
            self._git_dir = out.decode().strip()
            return self._git_dir
        target = self.clone_dir
        if (target / "HEAD").exists():
            self._git_dir = str(target)
            self.fetch()  # a clone left by an earlier run: bring it up to date first
            return self._git_dir
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            run_git(["clone", "--bare", "--quiet", "--", self.repo, str(tmp)], timeout_s=self.timeout_s)
            os.replace(tmp, target)
        except GitError as exc:
            raise ConfigError([f"git: cannot clone {self.repo}: {exc}"]) from exc
        except OSError:
            if not (target / "HEAD").exists():
                raise
        finally:
            if tmp.exists():
                _rmtree(tmp)
        log.info("git: cloned %s into %s", self.repo, target)
        self._git_dir = str(target)
        return self._git_dir

    def fetch(self) -> bool:
        """Fetch branches and tags into the clone now; True on success (always True when local).

        A failure is logged once (until a fetch succeeds again); the commits already fetched
        stay, so the last good commit remains in force.
        """
        if not self.cloned:
            return True
        git_dir = self._ensure_repo()
        try:
            run_git(
                ["fetch", "--quiet", "--prune", "--force", "--no-write-fetch-head", "--", self.repo,
                 "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                git_dir=git_dir, timeout_s=self.timeout_s,
            )
        except GitError as exc:
            with self._lock:
                first = not self._fetch_failing
                self._fetch_failing = True
                self.last_error = f"fetch from {self.repo} failed: {exc}"
            if first:
                log.warning("git: %s; keeping commit %s", self.last_error, self.commit[:12] or "(none yet)")
            return False
        with self._lock:
            if self._fetch_failing:
                log.info("git: fetch from %s works again", self.repo)
            self._fetch_failing = False
        return True

    def _fetch_in_background(self) -> None:
        def work() -> None:
            try:
                if self.fetch():
                    self._next_check = 0.0  # resolve the ref again on the next call
            except Exception as exc:  # never let a thread die with a traceback
                log.warning("git: fetch from %s failed: %s", self.repo, exc)

        if self._fetcher is not None and self._fetcher.is_alive():
            return
        self._fetcher = threading.Thread(target=work, name="gtm-git-fetch", daemon=True)
        self._fetcher.start()

    def wait_fetch(self, timeout: float | None = None) -> None:
        """Wait for a background fetch in flight (tests, shutdown)."""
        if self._fetcher is not None:
            self._fetcher.join(timeout)

    # -- the loader ---------------------------------------------------------------------------

    def __call__(self) -> Config:
        """The config of the commit the ref points at now.

        Raises:
            ConfigError: the commit does not validate (reasons name the commit), the ref does
                not resolve, or the repository cannot be read or cloned.
        """
        now = self.clock()
        first = self._result is None
        if not first and now < self._next_check:
            return self._answer()
        self._next_check = now + self.refresh_s
        git_dir = self._ensure_repo()
        if self.cloned and not first:
            if self.background:
                self._fetch_in_background()
            else:
                self.fetch()
        try:
            sha = resolve_commit(git_dir, self.ref, self.timeout_s)
        except GitError as exc:
            err = ConfigError([f"git: {self.repo}@{self.ref}: cannot resolve the ref: {exc}"])
            if err.reasons[0] != self.last_error:
                log.error("git: %s; keeping commit %s", err.reasons[0], self.commit[:12] or "(none)")
            self.last_error = err.reasons[0]
            self._key, self._result = None, err
            raise err from exc
        key = (sha, _local_fingerprint(self.regions_dir) if self.regions_path is None else ())
        if key == self._key:
            return self._answer()
        try:
            cfg = load_config_at_commit(
                git_dir, sha, policies_path=self.policies_path, regions_path=self.regions_path,
                regions_dir=self.regions_dir, label=self.ref, timeout_s=self.timeout_s,
            )
        except ConfigError as exc:
            self._key, self._result = key, exc
            self.rejected_commit = sha
            self.last_error = exc.reasons[0] if exc.reasons else f"commit {sha[:12]}: invalid"
            log.error(
                "git: commit %s of %s@%s rejected (%d problem(s)); keeping commit %s: %s",
                sha[:12], self.repo, self.ref, len(exc.reasons), self.commit[:12] or "(none)", self.last_error,
            )
            raise
        if self.commit and sha != self.commit:
            log.info("git: %s@%s now at commit %s (was %s)", self.repo, self.ref, sha[:12], self.commit[:12])
        self._key, self._result = key, cfg
        self.commit, self.rejected_commit, self.last_error = sha, "", ""
        return cfg

    def _answer(self) -> Config:
        result = self._result
        if isinstance(result, ConfigError):
            raise result
        assert result is not None
        return result


def _rmtree(path: Path) -> None:
    import shutil

    with contextlib.suppress(OSError):
        shutil.rmtree(path)


def load_candidate(
    spec: str,
    *,
    policies_path: str = "policies",
    regions_dir: str | None = None,
    regions_path: str | None = None,
    cache_dir: str | Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Config:
    """A candidate policy for ``gtm plan --candidate``: an existing path, or a Git ref.

    ``spec`` is tried in order: ``git:[REPO@]REF`` (always Git); an existing file or directory
    (policy files, regions from ``regions_dir``); else ``[REPO@]REF`` with REPO defaulting to
    the current directory's repository. For Git, the policy is read from the commit at
    ``policies_path`` and the regions from ``regions_path`` in the commit, if given, else from
    ``regions_dir``.

    Raises:
        ConfigError: the candidate does not validate (reasons name the commit) or cannot be read.
    """
    forced = spec.startswith("git:")
    if not forced and Path(spec).exists():
        if regions_dir is None:
            raise ConfigError([f"{spec}: no regions directory given"])
        return dataclasses.replace(load_config(spec, regions_dir), source="")
    gs = parse_git_spec(spec.removeprefix("git:"), ref_only_default_repo=".")
    try:
        return load_git_spec(
            gs, policies_path=policies_path, regions_dir=regions_dir, regions_path=regions_path,
            cache_dir=cache_dir, timeout_s=timeout_s,
        )
    except ConfigError as exc:
        if forced or not any(c in spec for c in "/.") or "@" in spec:
            raise
        # Looks like a path: say that it does not exist before what Git said about it.
        raise ConfigError([f"{spec}: no such file or directory (and as a Git ref: {'; '.join(exc.reasons)})"]) from exc


def load_git_spec(
    spec: GitSpec,
    *,
    policies_path: str = "policies",
    regions_dir: str | None = None,
    regions_path: str | None = None,
    cache_dir: str | Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Config:
    """One validated read of ``spec`` (cloning/fetching first when the repository is a URL).

    Raises:
        ConfigError: reasons name the commit.
    """
    src = GitPolicySource(
        spec.repo, spec.ref, policies_path=policies_path, regions_path=regions_path, regions_dir=regions_dir,
        refresh_s=0, timeout_s=timeout_s, cache_dir=cache_dir, background=False,
    )
    return src()
