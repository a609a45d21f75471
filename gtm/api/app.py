"""aiohttp application served by ``gtm controller --api-listen``.

| method | path | auth | what |
| --- | --- | --- | --- |
| GET | ``/``, ``/status`` | none | the read-only HTML status page (reloads itself; ``gtm.api.status_page``) |
| GET | ``/healthz`` | none | 200 while the process runs |
| GET | ``/v1/status`` | none | the ``gtm status -o json`` document |
| GET | ``/metrics`` | none | Prometheus text: controller, region health, weights, DNS, plan time, drills |
| POST | ``/v1/regions/{region}/drain`` | bearer token | body ``{"reason", "actor", "kind", "expires_in"}`` |
| DELETE | ``/v1/regions/{region}/drain`` | bearer token | lift the override; body ``{"reason", "actor"}`` optional |
| POST | ``/v1/regions/{region}/undamp`` | bearer token | body ``{"reason", "actor"}``: clear flap damping |

Drain, undrain and undamp go through ``gtm.controller.actions``, the same functions the CLI
calls: a malformed body answers 400, an unknown region 404, a refusal 409 (nothing written),
Redis trouble 503.

Anything that changes state needs ``Authorization: Bearer <token>``; the token comes from
``GTM_API_TOKEN`` or the file named by ``GTM_API_TOKEN_FILE``. With no token configured, the
state-changing endpoints answer 403: they are never open by default. Tokens are compared in
constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from gtm.api.drills import AUDIT_SCAN, drill_families, last_verdict
from gtm.config.loader import Config
from gtm.controller import actions
from gtm.controller.loop import Controller
from gtm.controller.status import gather_status
from gtm.errors import ConfigError, GtmError, RefusedError, StoreError, UnknownRegionError, UsageError
from gtm.models.plan import DesiredState
from gtm.store import Store

log = logging.getLogger(__name__)
STORE_KEY = web.AppKey("store", Store)
CONFIG_KEY = web.AppKey("config", object)
CONTROLLER_KEY = web.AppKey("controller", object)
TOKEN_KEY = web.AppKey("token", object)

_STATES = ("healthy", "degraded", "unhealthy", "unknown")


def api_token_from_env() -> str | None:
    """The API token from ``GTM_API_TOKEN`` or ``GTM_API_TOKEN_FILE``; None when neither is set.

    Raises:
        ConfigError: ``GTM_API_TOKEN_FILE`` cannot be read or is empty (a token was meant to be
            configured: starting with the state-changing API silently disabled would hide it).
    """
    token = os.environ.get("GTM_API_TOKEN")
    path = os.environ.get("GTM_API_TOKEN_FILE")
    if not token and path:
        try:
            with open(path, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise ConfigError([f"cannot read GTM_API_TOKEN_FILE {path}: {exc.strerror or exc}"]) from exc
        if not token:
            raise ConfigError([f"GTM_API_TOKEN_FILE {path} is empty"])
    return token or None


def build_app(
    store: Store,
    config: Callable[[], Config],
    controller: Controller | None = None,
    token: str | None = None,
) -> web.Application:
    """Build the API.

    Args:
        store: the Redis store.
        config: returns the config in force (the controller's last good one).
        controller: the running controller, for its counters (optional).
        token: bearer token for state-changing calls; None disables them (403).
    """
    app = web.Application(middlewares=[_errors])
    app[STORE_KEY] = store
    app[CONFIG_KEY] = config
    app[CONTROLLER_KEY] = controller
    app[TOKEN_KEY] = token
    app.router.add_get("/", _status_page)
    app.router.add_get("/status", _status_page)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/v1/status", _status)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/v1/regions/{region}/drain", _drain)
    app.router.add_delete("/v1/regions/{region}/drain", _undrain)
    app.router.add_post("/v1/regions/{region}/undamp", _undamp)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except UsageError as exc:
        return web.json_response({"error": str(exc), "problems": exc.problems}, status=400)
    except UnknownRegionError as exc:
        return web.json_response({"error": str(exc)}, status=404)
    except RefusedError as exc:
        return web.json_response({"error": str(exc)}, status=409)
    except StoreError as exc:
        return web.json_response({"error": "StoreError", "message": str(exc)}, status=503)


def _authorize(request: web.Request) -> None:
    token = request.app[TOKEN_KEY]
    if not token:
        raise web.HTTPForbidden(
            text='{"error": "state-changing API disabled: set GTM_API_TOKEN or GTM_API_TOKEN_FILE"}',
            content_type="application/json",
        )
    header = request.headers.get("Authorization", "")
    given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    if not given or not hmac.compare_digest(given.encode(), str(token).encode()):
        raise web.HTTPUnauthorized(
            text='{"error": "missing or wrong bearer token"}', content_type="application/json",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _cfg(request: web.Request) -> Config:
    return request.app[CONFIG_KEY]()  # type: ignore[no-any-return,operator]


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _status_page(request: web.Request) -> web.Response:
    """The read-only HTML status page (``gtm.api.status_page``); 503 with an error page that
    keeps reloading while Redis cannot be read."""
    import time

    from gtm.api.status_page import error_page, status_page

    headers = {"Cache-Control": "no-store"}
    try:
        text = await status_page(request.app[STORE_KEY], _cfg(request), request.app[CONTROLLER_KEY])
    except StoreError as exc:
        return web.Response(text=error_page(str(exc), time.time()), status=503, content_type="text/html",
                            headers=headers)
    return web.Response(text=text, content_type="text/html", headers=headers)


async def _status(request: web.Request) -> web.Response:
    data = await gather_status(request.app[STORE_KEY], _cfg(request))
    return web.json_response(data)


async def _metrics(request: web.Request) -> web.Response:
    reg = CollectorRegistry()
    ctl: Controller | None = request.app[CONTROLLER_KEY]  # type: ignore[assignment]
    if ctl is not None:
        reg.register(_ControllerCounters(ctl))
        for pub in ctl.publishers:  # the embedded DNS: answers, rcodes, how clients were located
            collector = getattr(pub, "metrics_collector", None)
            if collector is not None:
                reg.register(collector())
        Gauge("gtm_controller_leader", "1 when this replica holds the lease", registry=reg).set(int(ctl.is_leader))
        state = ctl.state
        if state is not None:
            Gauge("gtm_generation", "Routing generation in force", registry=reg).set(state.generation)
            Gauge("gtm_held", "1 when static stability holds the last routing", registry=reg).set(int(state.held))
            health = Gauge("gtm_region_health", "1 for the region's current state", ["region", "state"], registry=reg)
            spare = Gauge("gtm_region_spare_capacity", "Reported spare capacity", ["region", "unit"], registry=reg)
            for r, st in state.regions.items():
                for s in _STATES:
                    health.labels(r, s).set(int(st.state == s))
                spare.labels(r, st.capacity_unit).set(st.spare_capacity)
            weight = Gauge(
                "gtm_pool_weight", "Weight 0-255 per pool member", ["pool", "segment", "region"], registry=reg
            )
            for pid, pool in state.pools.items():
                for m in pool.members:
                    weight.labels(pid, pool.segment, m.region).set(m.weight)
            now = ctl.clock()
            damped = Gauge("gtm_region_damped", "1 while flap damping keeps the region out", ["region"], registry=reg)
            override = Gauge("gtm_region_override", "1 while an operator override applies",
                             ["region", "kind"], registry=reg)
            for r, st in state.regions.items():
                damped.labels(r).set(int(st.damped_until > now))
                if st.override:
                    override.labels(r, st.override).set(1)
            _announcement_metrics(state, reg)
            Gauge("gtm_plan_generated_timestamp_seconds", "When the plan in force was made, unix seconds "
                  "(time() minus it: the plan's age)", registry=reg).set(state.generated_at)
            age = Gauge("gtm_region_report_age_seconds", "Seconds since the region's newest report was observed "
                        "(grows while its agent is silent or its report expired)", ["region"], registry=reg)
            for r, st in state.regions.items():
                if st.observed_at is not None:
                    age.labels(r).set(max(0.0, now - st.observed_at))
        reg.register(_Families(_plan_time_families(ctl)))
    await _drill_metrics(request, reg)
    await _rollout_metrics(request, reg)
    await _rejected_metrics(request, reg)
    await _bgp_agent_metrics(request, reg)
    return web.Response(body=generate_latest(reg), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _announcement_metrics(state: DesiredState, reg: CollectorRegistry) -> None:
    """The plan's anycast announcements per prefix and region (what the agents should send)."""
    if not state.announcements:
        return
    labels = ["prefix", "region"]
    announced = Gauge("gtm_anycast_announced", "1 when the plan announces the prefix from the region, "
                      "0 when it withdraws it", labels, registry=reg)
    prepend = Gauge("gtm_anycast_prepend", "AS-path prepends the plan asks for (announced prefixes)", labels,
                    registry=reg)
    med = Gauge("gtm_anycast_med", "MED the plan asks for (announced prefixes)", labels, registry=reg)
    share = Gauge("gtm_anycast_share", "Region's share of the prefix's traffic the preference follows, "
                  "fraction 0..1", labels, registry=reg)
    planned = Gauge("gtm_anycast_withdraw_planned", "1 when a withdrawal is planned (drain, cordon, rollout: "
                    "GRACEFUL_SHUTDOWN first)", labels, registry=reg)
    changed = Gauge("gtm_anycast_changed_timestamp_seconds", "Unix time the announcement last changed",
                    labels, registry=reg)
    for prefix, anns in state.announcements.items():
        for a in anns:
            on = a.action == "announce"
            announced.labels(prefix, a.region).set(int(on))
            prepend.labels(prefix, a.region).set(a.prepend if on else 0)
            med.labels(prefix, a.region).set(a.med if on else 0)
            share.labels(prefix, a.region).set(a.share if on else 0.0)
            planned.labels(prefix, a.region).set(int(a.planned and not on))
            changed.labels(prefix, a.region).set(a.changed_at)


async def _bgp_agent_metrics(request: web.Request, reg: CollectorRegistry) -> None:
    """What the region agents' BGP speakers did (their stored ``BgpState``, see
    ``gtm.agent.bgp``): per region and prefix whether ExaBGP acknowledged an announcement,
    per region the last acknowledgement time and whether ExaBGP is connected, per peer the
    session. Omitted when Redis cannot be read or no agent runs a speaker."""
    try:
        states = await request.app[STORE_KEY].get_bgp_states(sorted(_cfg(request).inventory.regions))
    except StoreError:
        return
    if not states:
        return
    announced = Gauge("gtm_bgp_agent_announced", "1 when the agent's last command for the prefix was an "
                      "announcement ExaBGP acknowledged (done), 0 otherwise", ["region", "prefix"], registry=reg)
    last_ack = Gauge("gtm_bgp_agent_last_ack_timestamp_seconds", "Unix time of ExaBGP's last acknowledgement",
                     ["region"], registry=reg)
    connected = Gauge("gtm_bgp_agent_connected", "1 while ExaBGP's API process is connected to the agent",
                      ["region"], registry=reg)
    session = Gauge("gtm_bgp_agent_session_up", "1 while the BGP session to the peer is established",
                    ["region", "peer"], registry=reg)
    for region, st in sorted(states.items()):
        connected.labels(region).set(int(st.connected))
        if st.last_ack_at is not None:
            last_ack.labels(region).set(st.last_ack_at)
        for prefix, r in st.routes.items():
            announced.labels(region, prefix).set(int(r.sent_action == "announce" and r.acked == "done"))
        for peer, p in st.peers.items():
            session.labels(region, peer).set(int(p.up))


async def _rejected_metrics(request: web.Request, reg: CollectorRegistry) -> None:
    """``gtm_reports_rejected_by_reason_total{region,reason}``: agent reports rejected (malformed
    or implausible, see ``gtm.engine.plausibility.REASON_CODES``), counted in Redis by every
    controller and ``gtm status`` of the installation, once per distinct payload. Omitted when
    Redis cannot be read."""
    try:
        counts = await request.app[STORE_KEY].rejected_by_reason()
    except StoreError:
        return
    fam = CounterMetricFamily("gtm_reports_rejected_by_reason", "Agent reports rejected, by region and reason",
                              labels=["region", "reason"])
    for region, by in sorted(counts.items()):
        for code, n in sorted(by.items()):
            fam.add_metric([region, code], n)
    reg.register(_Families([fam]))


def _plan_time_families(ctl: Controller) -> list[Any]:
    """``gtm_plan_duration_seconds`` (histogram of ``engine.plan`` calls) and
    ``gtm_plan_last_duration_seconds`` (the newest one), seconds."""
    from gtm.controller.loop import PLAN_TIME_BUCKETS

    times = ctl.stats.plan_seconds
    buckets = [(f"{b:g}", float(n)) for b, n in zip(PLAN_TIME_BUCKETS, times.counts, strict=True)]
    hist = HistogramMetricFamily("gtm_plan_duration_seconds", "How long computing a plan took, seconds",
                                 buckets=[*buckets, ("+Inf", float(times.count))], sum_value=times.total_s)
    last = GaugeMetricFamily("gtm_plan_last_duration_seconds", "How long the newest plan took, seconds",
                             value=times.last_s)
    return [hist, last]


async def _drill_metrics(request: web.Request, reg: CollectorRegistry) -> None:
    """The drill series (``gtm.api.drills``): the running drill's lock and the newest verdict in
    the audit stream. Omitted when Redis cannot be read."""
    try:
        lock = await request.app[STORE_KEY].get_drill()
        rows = await request.app[STORE_KEY].read_audit(AUDIT_SCAN)
    except StoreError:
        return
    reg.register(_Families(drill_families(lock, last_verdict(rows))))


class _Families:
    """A collector of ready-made metric families (read before the scrape is rendered)."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Any:
        yield from self.families


ROLLOUT_STATUSES = ("running", "paused", "halted", "done", "aborted")


async def _rollout_metrics(request: web.Request, reg: CollectorRegistry) -> None:
    """Rollout series from the stored rollout states of the policy's rollouts.

    ``gtm_rollout_status{rollout,service,status}`` (1 for the current status, 0 for the others:
    alert on ``{status="halted"} == 1``; a rollout of the policy never started has every
    status 0), ``gtm_rollout_steps`` (steps taken so far),
    ``gtm_rollout_region_phase{rollout,region,phase}`` (1 for each region's current phase) and
    ``gtm_rollout_weight_cap{rollout,region}`` (fraction 0..1 of the region's normal weight).
    Omitted when Redis cannot be read; the rest of ``/metrics`` is still served.
    """
    from gtm.controller.rollout import load
    from gtm.engine import rollout as machine

    try:
        specs = {r.name: r for r in _cfg(request).policy.rollouts}
        names = list(specs)
        states = await load(request.app[STORE_KEY], names) if names else {}
    except (GtmError, OSError) as exc:
        log.warning("metrics: rollout states unavailable: %s", exc)
        return
    status = Gauge("gtm_rollout_status", "1 for the rollout's current status", ["rollout", "service", "status"],
                   registry=reg)
    steps = Gauge("gtm_rollout_steps", "Steps the rollout has taken", ["rollout"], registry=reg)
    phase = Gauge("gtm_rollout_region_phase", "1 for the region's current phase", ["rollout", "region", "phase"],
                  registry=reg)
    cap = Gauge("gtm_rollout_weight_cap", "Weight cap, fraction 0..1 of normal weight", ["rollout", "region"],
                registry=reg)
    for name in sorted(set(specs) - set(states)):  # in the policy, never started: every status 0
        for s in ROLLOUT_STATUSES:
            status.labels(name, specs[name].service, s).set(0)
    for name, (st, _raw) in sorted(states.items()):
        for s in ROLLOUT_STATUSES:
            status.labels(name, st.spec.service, s).set(int(st.status == s))
        steps.labels(name).set(st.step)
        for region, p in sorted(st.regions.items()):
            phase.labels(name, region, p.phase).set(1)
        for region, c in sorted(machine.caps(st).items()):
            cap.labels(name, region).set(c.fraction)


class _ControllerCounters:
    """The controller's monotonic counters, exposed as Prometheus counters (``*_total``)."""

    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl

    def collect(self) -> Any:
        st = self.ctl.stats
        for name, doc, value in (
            ("gtm_controller_cycles", "Reconcile cycles run", st.cycles),
            ("gtm_controller_plans", "Plans computed", st.plans),
            ("gtm_reports_rejected", "Malformed agent reports rejected", st.rejected_reports),
            ("gtm_store_errors", "Cycles that could not reach Redis", st.store_errors),
            ("gtm_config_errors", "Policy reloads rejected (last good kept)", st.config_errors),
            ("gtm_engine_errors", "Plans that failed (last good routing kept)", st.engine_errors),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        pubs = CounterMetricFamily("gtm_provider_publishes", "Routing changes written", labels=["provider"])
        errs = CounterMetricFamily("gtm_provider_errors", "Provider writes that failed", labels=["provider"])
        for provider, n in sorted(st.publishes.items()):
            pubs.add_metric([provider], n)
        gen = GaugeMetricFamily("gtm_provider_generation", "Routing generation the provider holds", labels=["provider"])
        behind = GaugeMetricFamily("gtm_provider_behind", "1 when the provider does not hold the routing in force",
                                   labels=["provider"])
        lag = GaugeMetricFamily("gtm_provider_lag_seconds", "Plan to applied, last publish", labels=["provider"])
        partials = CounterMetricFamily("gtm_provider_partial_applies",
                                       "Publishes that applied some units (zones, batches, record sets) and not others",
                                       labels=["provider"])
        failed_units = GaugeMetricFamily("gtm_provider_failed_units",
                                         "Units the last partial apply left unapplied (0 after a success)",
                                         labels=["provider"])
        current = self.ctl.state.routing_digest() if self.ctl.state is not None and self.ctl.state.services else None
        for pub in self.ctl.publishers:  # local publishers (embedded DNS): applied in the loop itself
            info = self.ctl.published.get(pub.name, {})
            errs.add_metric([pub.name], st.publish_errors.get(pub.name, 0))
            gen.add_metric([pub.name], float(info.get("generation") or 0))
            behind.add_metric([pub.name], float(current is not None and self.ctl.applied_digest(pub.name) != current))
            lag.add_metric([pub.name], float(info.get("lag_s") or 0.0))
        for w in self.ctl.workers:
            pubs.add_metric([w.name], w.publishes)
            errs.add_metric([w.name], w.errors)
            gen.add_metric([w.name], float(w.info.get("generation") or 0))
            behind.add_metric([w.name], float(current is not None and w.applied_digest != current))
            lag.add_metric([w.name], float(w.info.get("lag_s") or 0.0))
            partials.add_metric([w.name], w.partials)
            failed_units.add_metric([w.name], w.failed_units)
        yield pubs
        yield errs
        yield gen
        yield behind
        yield lag
        yield partials
        yield failed_units


async def _drain(request: web.Request) -> web.Response:
    """Drain or cordon a region through ``gtm.controller.actions.drain``, as ``gtm drain``
    does: body ``{"reason", "actor", "kind", "expires_in", "force"}`` (unknown fields are
    rejected). A drain the safety rules would hold is refused with 409 and the reasons, unless
    ``force`` (audited with the holds it overrode)."""
    _authorize(request)
    region = request.match_info["region"]
    body = await _json_body(request, required=True)
    order = actions.DrainOrder.parse({"actor": "api", **body, "region": region}, via="api")
    outcome = await actions.drain(request.app[STORE_KEY], _cfg(request), order, via="api")
    data = outcome.to_dict()
    projection = {k: data[k] for k in ("held_by_safety", "projected_shares", "projected_load", "capacity_unit")}
    if outcome.refused:
        return web.json_response(
            {"error": f"{order.kind} of {region} would be held by the safety rules; nothing written "
                      "(send force: true to override, audited)", **projection},
            status=409,
        )
    return web.json_response({"override": data["override"], **projection}, status=201)


async def _undrain(request: web.Request) -> web.Response:
    """Lift a drain or cordon through ``gtm.controller.actions.undrain``; optional body
    ``{"actor", "reason"}``. 404 when the region has none."""
    _authorize(request)
    region = request.match_info["region"]
    body = await _json_body(request, required=False)
    outcome = await actions.undrain(
        request.app[STORE_KEY], _cfg(request), region, actor=_text(body, "actor", "api"),
        reason=_text(body, "reason", ""), via="api",
    )
    if not outcome.removed:
        return web.json_response({"error": f"{region} has no drain or cordon"}, status=404)
    return web.json_response({"region": region, "removed": True,
                              "lifted": outcome.lifted.model_dump() if outcome.lifted is not None else None})


async def _undamp(request: web.Request) -> web.Response:
    """Clear a region's flap damping through ``gtm.controller.actions.undamp``, as ``gtm
    undamp`` does: body ``{"reason", "actor"}``, reason required. 409 when it is not damped."""
    _authorize(request)
    region = request.match_info["region"]
    body = await _json_body(request, required=True)
    done = await actions.undamp(request.app[STORE_KEY], region, actor=_text(body, "actor", "api"),
                                reason=_text(body, "reason", ""), via="api")
    return web.json_response({"region": region, "cleared": True, "at": done.at,
                              "was_damped_until": done.was_damped_until, "remaining_s": done.remaining_s,
                              "state": done.state})


async def _json_body(request: web.Request, *, required: bool) -> dict[str, Any]:
    """The request's JSON object; ``{}`` when optional and absent. Raises ``UsageError``."""
    if not request.can_read_body:
        if required:
            raise UsageError("body must be a JSON object")
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise UsageError("body must be JSON") from None
    if not isinstance(body, dict):
        raise UsageError("body must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str, default: str) -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise UsageError(f"{name} must be a string")
    return value
