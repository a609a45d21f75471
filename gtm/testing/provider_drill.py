"""The provider drill: one failover published to three DNS providers at once, read back from each.

In one process, on an embedded store and on 127.0.0.1 only: the four simulated fleets of
``gtm.testing.scenario`` (the demo's), their agents and a controller publishing

- to the **embedded DNS** (a local publisher, written in the control loop), read back with
  real queries carrying an EDNS Client Subnet from an EU and a US network (answer shares);
- to a throw-away **BIND 9** primary (``named``, ``BindServer``) through TSIG-signed RFC2136
  updates, read back with real queries to ``named`` for the default segment's name
  (``chat.gtm.example.com``) and the EU segment's (``eu.chat.gtm.example.com``): the addresses;
- to **Route 53** as mocked by moto's server (``MotoServer``, with ``MOTO_FIX``), read back with
  ``ListResourceRecordSets``: the weighted record sets (set identifier = region, weight) at
  ``default.pool.chat...`` and ``eu.pool.chat...``.

BIND and Route 53 are record-holding providers, published by the controller's background
provider workers (leader only), so each converges on its own schedule; Route 53 is paced at
its real API limit (5 calls per second). The drill fails eu-west-1's fleet (its health endpoint
answers 503), measures per provider the seconds from the failure until its read-back no longer
names eu-west-1 (fault detection included), checks that EU answers name only EU regions
everywhere throughout, then recovers the fleet and measures its return.

AWS credentials are fake (``testing``), set in this process's environment only for the drill
and restored afterwards; the user's AWS configuration files are not read.

Run it with ``gtm drill providers`` (``-o json`` for scripts) or ``make drill-providers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import dns.rdatatype
from rich import box
from rich.console import Console
from rich.table import Table

from gtm.controller.loop import Controller, ControllerSettings
from gtm.models.policy import ProviderConfig
from gtm.providers.dnsclient import answer_shares, query
from gtm.providers.embedded_dns import EmbeddedDnsServer
from gtm.providers.geo import PrefixTable
from gtm.providers.registry import build_provider
from gtm.store import connect
from gtm.testing.bind import BindServer
from gtm.testing.moto import MotoServer
from gtm.testing.ports import free_port
from gtm.testing.scenario import (
    ADDRESS_TO_REGION,
    EU_CLIENT,
    FQDN,
    REGIONS,
    US_CLIENT,
    scenario_config,
    set_fleet_mode,
    start_fleets_and_agents,
)

__all__ = ["ProviderResult", "run_provider_drill"]

ZONE = "gtm.example.com"
FAILED = "eu-west-1"
EU_REGIONS = frozenset(r[0] for r in REGIONS if r[1] == "EU")
ALL_REGIONS = frozenset(r[0] for r in REGIONS)
BIND_NAMES = {"default": FQDN, "eu": f"eu.{FQDN}"}
R53_NAMES = {"default": f"default.pool.{FQDN}", "eu": f"eu.pool.{FQDN}"}
STEADY_TIMEOUT_S = 25.0
CONVERGE_TIMEOUT_S = 15.0
SETTLE_S = 1.5
SETTLE_TIMEOUT_S = 12.0
POLL_S = 0.1
_LABELS = {"embedded DNS": ("embedded", "DNS"), "BIND (rfc2136)": ("BIND", "rfc2136"),
           "Route 53 (moto)": ("Route 53", "moto")}
SETTLED_QUERIES = 200
"""Queries per client subnet when the embedded DNS is read back in a settled state (20 while polling)."""
STEADY_WINDOW_S = 3.0
"""Seconds watched at the end with nothing changing: no provider may be called in that time."""

ReadBack = dict[str, dict[str, Any]]
"""One provider's read-back: view (``EU``/``US`` clients, ``default``/``eu`` names) → region →
share (embedded DNS), ``True`` (BIND: an address of the region is in the RRset) or weight
(Route 53)."""

_FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextlib.contextmanager
def fake_aws_env() -> Iterator[None]:
    """Fake AWS credentials in this process's environment (only moto is ever called), restored
    on exit; ``AWS_PROFILE`` and ``AWS_SESSION_TOKEN`` are hidden meanwhile."""
    keys = [*_FAKE_AWS_ENV, "AWS_PROFILE", "AWS_SESSION_TOKEN"]
    saved = {k: os.environ.get(k) for k in keys}
    try:
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(k, None)
        os.environ.update(_FAKE_AWS_ENV)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class ProviderResult:
    """What the drill saw at one provider."""

    name: str
    how: str
    before: ReadBack = field(default_factory=dict)
    after: ReadBack = field(default_factory=dict)
    back: ReadBack = field(default_factory=dict)
    failover_s: float | None = None
    recovery_s: float | None = None
    eu_seen: set[str] = field(default_factory=set)
    reads: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.name, "read_back": self.how, "before": self.before, "after": self.after,
            "back": self.back, "failover_s": self.failover_s, "recovery_s": self.recovery_s,
            "eu_regions_seen": sorted(self.eu_seen), "reads": self.reads,
        }


def _regions(rb: ReadBack) -> set[str]:
    """Every region named anywhere in a read-back."""
    return {r for view in rb.values() for r in view}


def _complete(rb: ReadBack) -> bool:
    """Steady state: all four regions in the default/US view, both EU regions in the EU view."""
    default = rb.get("default", rb.get("US", {}))
    eu = rb.get("eu", rb.get("EU", {}))
    return set(default) == ALL_REGIONS and set(eu) == EU_REGIONS


class _Abort(Exception):
    """Stop the drill early (the reason is already in ``problems``)."""


def eu_view_of(rb: ReadBack) -> str:
    """The key of a read-back's EU view (``EU`` for client subnets, ``eu`` for segment names)."""
    return "EU" if "EU" in rb else "eu"


def _fmt_view(regions: dict[str, Any]) -> str:
    """One view of a read-back, a region per line: ``eu-west-1 50%`` (share), ``eu-west-1``
    (in the RRset) or ``eu-west-1 w64`` (weight)."""
    if not regions:
        return "(no answer)"
    return "\n".join(
        r if v is True else (f"{r} {v:.0%}" if isinstance(v, float) else f"{r} w{v}")
        for r, v in sorted(regions.items())
    )


def _fmt(rb: ReadBack) -> str:
    return "; ".join(f"{view}: {_fmt_view(regions)}".replace("\n", ", ") for view, regions in rb.items())


async def _time_until(
    read: Callable[[], Awaitable[ReadBack]], pred: Callable[[ReadBack], bool], t0: float, timeout: float,
    *, streak: int = 1,
) -> tuple[float | None, ReadBack]:
    """Seconds from ``t0`` to the first read-back of ``streak`` in a row satisfying ``pred``."""
    first: float | None = None
    ok = 0
    last: ReadBack = {}
    while time.monotonic() - t0 < timeout:
        at = time.monotonic() - t0
        last = await read()
        if pred(last):
            first = first if first is not None else at
            ok += 1
            if ok >= streak:
                return round(first, 2), last
        else:
            first, ok = None, 0
        await asyncio.sleep(POLL_S)
    return None, last


async def run_provider_drill(console: Console, *, json_out: bool = False) -> bool:
    """Run the drill; True when every provider converged and every expectation held."""
    problems: list[str] = []
    steady_calls: dict[str, int] = {}

    def expect(cond: bool, what: str) -> None:
        if not cond:
            problems.append(what)
            if not json_out:
                console.print(f"[red]expectation failed[/]: {what}", highlight=False)

    def say(msg: str) -> None:
        if not json_out:
            console.print(msg, highlight=False, soft_wrap=True)

    started = time.monotonic()
    ports = {r[0]: free_port() for r in REGIONS}
    cfg = scenario_config(ports)
    addr_to_region = ADDRESS_TO_REGION
    stop = asyncio.Event()
    runners: list[Any] = []
    tasks: list[asyncio.Task[Any]] = []
    bind: BindServer | None = None
    moto: MotoServer | None = None
    dns_server: EmbeddedDnsServer | None = None
    store = connect("embedded://", ns=f"drill-{secrets.token_hex(4)}")  # fakeredis may be shared in-process
    results: dict[str, ProviderResult] = {}
    ctl: Controller | None = None
    pids: dict[str, int | None] = {}
    with fake_aws_env():
        try:
            # -- the two record-holding providers' servers ---------------------------------
            started_bind, started_moto = await asyncio.gather(
                asyncio.to_thread(BindServer.start, [ZONE]), asyncio.to_thread(MotoServer), return_exceptions=True,
            )
            bind = started_bind if isinstance(started_bind, BindServer) else None
            moto = started_moto if isinstance(started_moto, MotoServer) else None
            for err in (started_bind, started_moto):
                if isinstance(err, BaseException):
                    expect(False, f"cannot start {type(err).__name__.removesuffix('StartError') or 'a server'}: {err}")
            if bind is None or moto is None:
                raise _Abort
            pids.update(named_pid=bind.pid, moto_pid=moto.pid)
            r53 = boto3.client("route53", region_name="us-east-1", endpoint_url=moto.url)
            zone_id = (await asyncio.to_thread(
                r53.create_hosted_zone, Name=ZONE, CallerReference=f"gtm-drill-{time.time_ns()}",
            ))["HostedZone"]["Id"].rsplit("/", 1)[-1]
            # Default max_change_fraction (0.5): weight-only ramp steps are routine and pass it.
            provider_cfgs = [
                ProviderConfig(name="bind", kind="rfc2136", options=bind.provider_options()),
                ProviderConfig(name="route53", kind="route53",
                               options={"endpoint_url": moto.url, "hosted_zone_ids": {ZONE: zone_id}}),
            ]
            providers = [build_provider(p, cfg.policy) for p in provider_cfgs]
            say(f"[bold]gtm provider drill[/]: zone {ZONE}, service {FQDN}, all on 127.0.0.1")
            say(f"  BIND 9 (named pid {bind.pid}) on :{bind.port}, RFC2136 + TSIG {bind.algorithm}")
            say(f"  Route 53 (moto server pid {moto.pid}) at {moto.url}, hosted zone {zone_id}, 5 calls/s")

            # -- the scenario's world: fleets, agents, controller, embedded DNS -------------
            await start_fleets_and_agents(cfg, ports, store, stop, runners, tasks, agent_prefix="drill")
            dns_server = EmbeddedDnsServer(cfg.policy.zones, PrefixTable.from_regions(cfg.inventory.regions.values()))
            await dns_server.start("127.0.0.1", 0)
            say(f"  embedded DNS on :{dns_server.port}; clients EU {EU_CLIENT}, US {US_CLIENT}\n")
            ctl = Controller(store, lambda: cfg, [dns_server], ControllerSettings(tick_s=0.25), providers=providers)
            tasks.append(asyncio.create_task(ctl.run(stop), name="controller"))

            # -- read-backs -----------------------------------------------------------------
            dns_port = dns_server.port
            bind_host, bind_port = bind.host, bind.port

            async def read_embedded(n: int = 20) -> ReadBack:
                out: ReadBack = {}
                for view, subnet in (("EU", EU_CLIENT), ("US", US_CLIENT)):
                    shares = await answer_shares("127.0.0.1", dns_port, FQDN, subnet, n, addr_to_region)
                    out[view] = {r: s for r, s in shares.items() if r != "none"}
                return out

            async def read_bind() -> ReadBack:
                out: ReadBack = {}
                for view, qname in BIND_NAMES.items():
                    resp = await query(bind_host, bind_port, qname, "A", timeout=1.0)
                    addrs = {rd.to_text() for rrset in resp.answer if rrset.rdtype == dns.rdatatype.A
                             for rd in rrset}
                    out[view] = {addr_to_region.get(a, a): True for a in sorted(addrs)}
                return out

            def list_route53() -> ReadBack:
                rrsets: dict[tuple[str, str, str], dict[str, Any]] = {}
                for page in r53.get_paginator("list_resource_record_sets").paginate(HostedZoneId=zone_id):
                    for r in page["ResourceRecordSets"]:  # moto's pages overlap: dedupe by key
                        rrsets[(r["Name"], r["Type"], r.get("SetIdentifier", ""))] = r
                out: ReadBack = {}
                for view, name in R53_NAMES.items():
                    out[view] = {r["SetIdentifier"]: r["Weight"] for r in rrsets.values()
                                 if r["Name"].rstrip(".") == name and r["Type"] == "A" and "Weight" in r}
                # the EU clients' way in: the continent-EU alias at the service name
                eu_alias = [r for r in rrsets.values() if r["Name"].rstrip(".") == FQDN
                            and r.get("GeoLocation", {}).get("ContinentCode") == "EU"]
                targets = {r["AliasTarget"]["DNSName"].rstrip(".") for r in eu_alias if "AliasTarget" in r}
                for target in targets - {R53_NAMES["eu"]}:  # EU clients sent elsewhere: flagged as non-EU
                    out["eu"][f"alias:{target}"] = 0
                return out

            async def read_route53() -> ReadBack:
                return await asyncio.to_thread(list_route53)

            reads: dict[str, Callable[[], Awaitable[ReadBack]]] = {
                "embedded DNS": read_embedded, "BIND (rfc2136)": read_bind, "Route 53 (moto)": read_route53,
            }
            how = {
                "embedded DNS": f"queries for {FQDN} with ECS {EU_CLIENT} (EU) / {US_CLIENT} (US): answer shares "
                                f"({SETTLED_QUERIES} each when settled, 20 while polling)",
                "BIND (rfc2136)": f"A queries to named for {BIND_NAMES['default']} and {BIND_NAMES['eu']}",
                "Route 53 (moto)": f"ListResourceRecordSets: weighted A at {R53_NAMES['default']} and "
                                   f"{R53_NAMES['eu']}",
            }
            eu_view = {"embedded DNS": "EU", "BIND (rfc2136)": "eu", "Route 53 (moto)": "eu"}
            results = {n: ProviderResult(n, how[n]) for n in reads}

            def watched(name: str, settled_read: bool = False) -> Callable[[], Awaitable[ReadBack]]:
                async def read() -> ReadBack:
                    rb = await (read_embedded(SETTLED_QUERIES) if settled_read and name == "embedded DNS"
                                else reads[name]())
                    res = results[name]
                    res.reads += 1
                    res.eu_seen.update(rb.get(eu_view[name], {}))
                    return rb
                return read

            async def all_until(pred: Callable[[ReadBack], bool], t0: float, timeout: float,
                                ) -> dict[str, tuple[float | None, ReadBack]]:
                outs = await asyncio.gather(*(
                    _time_until(watched(n), pred, t0, timeout, streak=2 if n == "embedded DNS" else 1)
                    for n in reads
                ))
                return dict(zip(reads, outs, strict=True))

            async def settled(timeout: float = SETTLE_TIMEOUT_S) -> float | None:
                """Seconds until the controller's routing has not changed for ``SETTLE_S`` (planned
                ramps done) and every provider worker applied it; None on timeout."""
                t = time.monotonic()
                last, since = None, t
                while time.monotonic() - t < timeout:
                    st = ctl.state if ctl is not None else None
                    digest = st.routing_digest() if st is not None and st.services else None
                    now = time.monotonic()
                    if digest != last:
                        last, since = digest, now
                    elif (digest is not None and now - since >= SETTLE_S
                          and all(w.applied_digest == digest for w in (ctl.workers if ctl else []))):
                        return round(now - t, 2)
                    await asyncio.sleep(POLL_S)
                return None

            async def read_all() -> dict[str, ReadBack]:
                rbs = await asyncio.gather(*(watched(n, settled_read=True)() for n in reads))
                return dict(zip(reads, rbs, strict=True))

            # 1. steady state everywhere
            t0 = time.monotonic()
            steady = await all_until(_complete, t0, STEADY_TIMEOUT_S)
            for n, (took, rb) in steady.items():
                results[n].before = rb
                expect(took is not None, f"{n}: steady state (all four regions, both EU regions) "
                                         f"within {STEADY_TIMEOUT_S:.0f}s; saw {_fmt(rb)!r}")
            if any(took is None for took, _ in steady.values()):
                raise _Abort
            took = await settled()
            say(f"[bold]+{time.monotonic() - started:4.1f}s[/] steady state at every provider"
                + ("" if took is not None else " [yellow](routing still changing)[/]"))
            for n, rb in (await read_all()).items():
                results[n].before = rb
                expect(_complete(rb), f"{n}: every region present at steady state; saw {_fmt(rb)!r}")

            # 2. the fleet fails
            await set_fleet_mode(ports[FAILED], "dead")
            t0 = time.monotonic()
            say(f"[bold]+{t0 - started:4.1f}s[/] {FAILED} fleet fails (health 503) → waiting for every provider")
            failed = await all_until(lambda rb: FAILED not in _regions(rb) and bool(rb.get(eu_view_of(rb))),
                                     t0, CONVERGE_TIMEOUT_S)
            for n, (took, rb) in failed.items():
                results[n].failover_s, results[n].after = took, rb
                expect(took is not None, f"{n}: {FAILED} excluded within {CONVERGE_TIMEOUT_S:.0f}s")
            reason = ctl.state.regions[FAILED].reason if ctl.state and FAILED in ctl.state.regions else "?"
            say(f"         controller: {FAILED} {reason}")
            await settled()
            for n, rb in (await read_all()).items():  # still excluded once everything settled
                results[n].after = rb
                expect(FAILED not in _regions(rb) and bool(rb.get(eu_view_of(rb))),
                       f"{n}: {FAILED} stays excluded and EU clients keep an EU answer; saw {_fmt(rb)!r}")

            # 3. it recovers
            await set_fleet_mode(ports[FAILED], "healthy")
            t0 = time.monotonic()
            say(f"[bold]+{t0 - started:4.1f}s[/] {FAILED} recovers → waiting for it to return everywhere")
            back = await all_until(lambda rb: FAILED in _regions(rb), t0, CONVERGE_TIMEOUT_S)
            for n, (took, rb) in back.items():
                results[n].recovery_s, results[n].back = took, rb
                expect(took is not None, f"{n}: {FAILED} back within {CONVERGE_TIMEOUT_S:.0f}s")
            took = await settled()
            say(f"[bold]+{time.monotonic() - started:4.1f}s[/] {FAILED} ramped back in"
                + ("" if took is not None else " [yellow](routing still changing)[/]"))
            for n, rb in (await read_all()).items():
                results[n].back = rb
                expect(_complete(rb), f"{n}: every region back after recovery; saw {_fmt(rb)!r}")

            # Steady state: nothing changes, so no provider may be called at all.
            calls0 = {w.name: w.attempts for w in ctl.workers}
            await asyncio.sleep(STEADY_WINDOW_S)
            steady_calls = {w.name: w.attempts - calls0[w.name] for w in ctl.workers}
            say(f"steady state for {STEADY_WINDOW_S:g}s: provider calls "
                + ", ".join(f"{n} {c}" for n, c in steady_calls.items()))
            for n, c in steady_calls.items():
                expect(c == 0, f"{n}: no provider call in a steady state (saw {c})")
            for w in ctl.workers:
                expect(w.errors == 0, f"{w.name}: published without errors (last: {w.info.get('last_error')!r})")
            for n, res in results.items():
                expect(res.eu_seen <= EU_REGIONS,
                       f"{n}: EU answers named only EU regions (saw {sorted(res.eu_seen)})")
        except _Abort:
            pass
        finally:
            stop.set()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 12)
            if dns_server is not None:
                await dns_server.stop()
            for runner in runners:
                await runner.cleanup()
            await store.aclose()
            if moto is not None:
                await asyncio.to_thread(moto.stop)
            if bind is not None:
                await asyncio.to_thread(bind.stop)

    ok = not problems
    elapsed = round(time.monotonic() - started, 1)
    if json_out:
        print(json.dumps({
            "ok": ok, "problems": problems, "failed_region": FAILED, "elapsed_s": elapsed,
            "servers": pids,
            "providers": [r.as_dict() for r in results.values()],
            "controller": {"cycles": ctl.stats.cycles, "plans": ctl.stats.plans} if ctl else {},
            "provider_workers": {w.name: {"publishes": w.publishes, "errors": w.errors, "attempts": w.attempts}
                                 for w in (ctl.workers if ctl else [])},
            "steady_state_provider_calls": steady_calls,
        }, indent=2))
        return ok
    wide = console.width >= 110
    t = Table(title=f"{FAILED} fails, then recovers: what each provider answers",
              caption=f"out / back: seconds from the fleet's failure / recovery (detection included) until the "
                      f"read-back excludes / names again {FAILED}",
              box=box.SIMPLE_HEAD, padding=(0, 1))
    t.add_column("provider", no_wrap=True)
    t.add_column("view", no_wrap=True)
    t.add_column("before", no_wrap=True)
    t.add_column(f"after {FAILED}\nfails", no_wrap=True)
    t.add_column("out\n(s)", justify="right", no_wrap=True)
    if wide:
        t.add_column("after\nrecovery", no_wrap=True)
    t.add_column("back\n(s)", justify="right", no_wrap=True)
    for res in results.values():
        title, sub = _LABELS.get(res.name, (res.name, ""))
        views = list(res.before or res.after or res.back) or ["-"]
        for i, view in enumerate(views):
            cells = [
                title if i == 0 else (f"[dim]{sub}[/]" if i == 1 else ""), view,
                _fmt_view(res.before.get(view, {})), _fmt_view(res.after.get(view, {})),
                ("—" if res.failover_s is None else f"{res.failover_s:.2f}") if i == 0 else "",
            ]
            if wide:
                cells.append(_fmt_view(res.back.get(view, {})))
            cells.append(("—" if res.recovery_s is None else f"{res.recovery_s:.2f}") if i == 0 else "")
            t.add_row(*cells, end_section=i == len(views) - 1)
    console.print(t)
    for res in results.values():
        console.print(f"  [dim]{res.name}: {res.how}[/]", highlight=False)
    if ctl is not None:
        pubs = ", ".join(f"{w.name} {w.publishes} publishes / {w.errors} errors" for w in ctl.workers)
        console.print(f"  [dim]provider workers: {pubs}; EU answers seen: "
                      + "; ".join(f"{r.name} {sorted(r.eu_seen)}" for r in results.values()) + "[/]",
                      highlight=False)
    console.print(f"[green]provider drill OK[/] in {elapsed}s" if ok
                  else f"[red]provider drill FAILED[/] in {elapsed}s: {'; '.join(problems)}", highlight=False)
    return ok

