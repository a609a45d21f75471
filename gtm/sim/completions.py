"""The simulator's completion endpoints, and its vantage-point gate.

Per engine kind, the APIs a synthetic probe (``gtm.agent.probe``) calls, in the engines' wire
formats:

* vLLM, SGLang: OpenAI-compatible ``POST /v1/completions`` and ``/v1/chat/completions``,
  ``"stream": true`` as Server-Sent Events (``data: {json}`` per chunk, then ``data: [DONE]``),
  else one JSON body;
* TGI: ``POST /generate_stream`` (``data:{"token": {...}, "generated_text": ...}`` events) and
  ``POST /generate`` (``{"generated_text": ...}``), and the OpenAI-compatible endpoints as above
  (TGI 2.x's Messages API and ``/v1/completions``);
* Triton: ``POST /v2/models/<model>/generate_stream`` (``data: {"text_output": ...}`` events) and
  ``/v2/models/<model>/generate``; an unknown model is a 400, as Triton answers it.

The fleet "generates" ``FleetSim.answer`` word by word: the first token after ``ttft_s``
seconds, each next one ``itl_s`` later, at most ``max_tokens`` (``max_new_tokens`` for TGI).
While ``dead`` the endpoints answer 503; while ``wedged`` they accept the request and never send
a byte (``/health`` and ``/metrics`` keep answering); with ``malformed`` set the stream carries
garbage instead of JSON.

Every completion request is counted (``FleetSim.count_completion``): served when answered in
full with a well-formed 200, else failed; per ``X-GTM-Client`` header value too, so a drill can
compare what the fleets served with what its clients recorded.

Vantage gate: a request carrying ``X-GTM-Vantage: <region>`` (what the agents' vantage probes
send) from a region in ``blocked_vantage``, or from any region while ``blocked_all_vantage``
is set, hangs like a dropped packet, on every route, while the block stands. Requests without
the header (the fleet's own agent) are never blocked.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gtm.agent.completion import CLIENT_HEADER
from gtm.sim.fleet import SIM_KEY, FleetSim

VANTAGE_HEADER = "X-GTM-Vantage"
"""Header a vantage probe names its region in (``gtm.agent.vantage`` sends it)."""

HANG_POLL_S = 0.05
"""How often a hung request looks whether the wedge or block was lifted, seconds."""

_TOKEN = re.compile(r"\s*\S+")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_FAILED: web.ResponseKey[bool] = web.ResponseKey("gtm_failed", bool)
"""Response item set when a 200 answer was garbage or broke off (the request counts as failed)."""


def tokens(text: str, limit: int) -> list[str]:
    """``text`` split into word tokens (each with its leading blank), at most ``limit``."""
    return _TOKEN.findall(text)[: max(0, limit)]


async def _hang_while(sim: FleetSim, cond: Callable[[], bool]) -> None:
    """Wait while ``cond()`` holds and the server is not shutting down."""
    while cond() and not sim.closing:
        await asyncio.sleep(HANG_POLL_S)


async def _gate(request: web.Request) -> web.Response | None:
    """The answer for a request that cannot be served now (after hanging while wedged), or None."""
    sim = request.app[SIM_KEY]
    if sim.mode == "dead":
        return web.json_response({"error": "engine dead", "error_type": "EngineDeadError"}, status=503)
    await _hang_while(sim, lambda: sim.mode == "wedged")
    if sim.closing:
        return web.json_response({"error": "shutting down"}, status=503)
    return None


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"invalid JSON: {exc}"}),
                                 content_type="application/json") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error": "body must be a JSON object"}', content_type="application/json")
    return body


def _int(value: object, default: int) -> int:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return default


async def _stream(request: web.Request, events: list[str], sse_prefix: str = "data: ",
                  done: str | None = None) -> web.StreamResponse:
    """Send ``events`` as Server-Sent Events, paced like generation (TTFT, then ITL)."""
    sim = request.app[SIM_KEY]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    try:
        for i, event in enumerate(events):
            await asyncio.sleep(sim.ttft_s if i == 0 else sim.itl_s)
            payload = "{not json" if sim.malformed else event
            if sim.malformed:
                resp[_FAILED] = True
            await resp.write(f"{sse_prefix}{payload}\n\n".encode())
        if done is not None:
            await resp.write(f"{sse_prefix}{done}\n\n".encode())
        await resp.write_eof()
    except ConnectionResetError:  # the client gave up (its probe timed out, or it stopped)
        resp[_FAILED] = True
    return resp


def _garbage() -> web.Response:
    """A 200 answer that is not JSON (``malformed``); counted as failed."""
    resp = web.Response(text="{not json", content_type="application/json")
    resp[_FAILED] = True
    return resp


def _counted(handler: Handler) -> Handler:
    """``handler``, counting each request it serves as served or failed (see module doc)."""

    async def counted(request: web.Request) -> web.StreamResponse:
        sim = request.app[SIM_KEY]
        ok = False
        sim.completions_in_flight += 1
        try:
            resp = await handler(request)
            ok = resp.status == 200 and not resp.get(_FAILED, False)
            return resp
        finally:
            sim.completions_in_flight -= 1
            sim.count_completion(ok, request.headers.get(CLIENT_HEADER))

    return counted


async def _generated(sim: FleetSim, n: int) -> str:
    """Wait as long as generating ``n`` tokens takes; the text (non-streaming answers)."""
    words = tokens(sim.answer, n)
    if words:
        await asyncio.sleep(sim.ttft_s + sim.itl_s * (len(words) - 1))
    return "".join(words)


async def _openai(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM_KEY]
    chat = request.path.endswith("/chat/completions")
    body = await _body(request)
    model = body.get("model")
    if model is not None and model != sim.model:
        return web.json_response({"object": "error", "message": f"The model `{model}` does not exist.",
                                  "type": "NotFoundError", "code": 404}, status=404)
    gated = await _gate(request)
    if gated is not None:
        return gated
    n = _int(body.get("max_tokens"), 16)
    base = {"id": f"cmpl-{uuid.uuid4().hex[:12]}", "created": int(time.time()), "model": sim.model}
    if not body.get("stream"):
        text = await _generated(sim, n)
        if sim.malformed:
            return _garbage()
        choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant", "content": text}} if chat
                                  else {"index": 0, "text": text})
        return web.json_response({**base, "object": "chat.completion" if chat else "text_completion",
                                  "choices": [{**choice, "finish_reason": "length"}]})
    words = tokens(sim.answer, n)
    obj = "chat.completion.chunk" if chat else "text_completion"
    events = []
    for i, w in enumerate(words):
        last = i == len(words) - 1
        choice = {"index": 0, "delta": {"content": w}} if chat else {"index": 0, "text": w}
        events.append(json.dumps({**base, "object": obj, "choices": [{**choice, "finish_reason": "length" if last
                                                                      else None}]}))
    return await _stream(request, events, done="[DONE]")


async def _tgi(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM_KEY]
    body = await _body(request)
    params = body.get("parameters")
    n = _int(params.get("max_new_tokens"), 20) if isinstance(params, dict) else 20
    gated = await _gate(request)
    if gated is not None:
        return gated
    if request.path.endswith("/generate"):
        text = await _generated(sim, n)
        if sim.malformed:
            return _garbage()
        return web.json_response({"generated_text": text})
    words = tokens(sim.answer, n)
    events = []
    for i, w in enumerate(words):
        last = i == len(words) - 1
        events.append(json.dumps({
            "index": i + 1,
            "token": {"id": 1000 + i, "text": w, "logprob": -0.1, "special": False},
            "generated_text": "".join(words) if last else None,
            "details": {"finish_reason": "length", "generated_tokens": len(words)} if last else None,
        }))
    return await _stream(request, events, sse_prefix="data:")


async def _triton(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM_KEY]
    model = request.match_info["model"]
    if model != sim.model:
        return web.json_response({"error": f"Request for unknown model: '{model}' is not found"}, status=400)
    body = await _body(request)
    n = _int(body.get("max_tokens"), 16)
    gated = await _gate(request)
    if gated is not None:
        return gated
    base = {"model_name": sim.model, "model_version": "1"}
    if request.path.endswith("/generate"):
        text = await _generated(sim, n)
        if sim.malformed:
            return _garbage()
        return web.json_response({**base, "text_output": text})
    events = [json.dumps({**base, "text_output": w}) for w in tokens(sim.answer, n)]
    return await _stream(request, events)


@web.middleware
async def vantage_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Hang requests from blocked vantage points while the block stands (see module doc)."""
    vantage = request.headers.get(VANTAGE_HEADER)
    if vantage:
        sim = request.app[SIM_KEY]
        await _hang_while(sim, lambda: sim.blocks_vantage(vantage))
        if sim.closing:
            return web.json_response({"error": "shutting down"}, status=503)
    return await handler(request)


def add_routes(app: web.Application, kind: str) -> None:
    """Register the completion endpoints of ``kind`` on ``app``."""
    if kind in ("vllm", "sglang"):
        app.router.add_post("/v1/completions", _counted(_openai))
        app.router.add_post("/v1/chat/completions", _counted(_openai))
    elif kind == "tgi":
        # TGI 2.x serves the OpenAI-compatible API too (its Messages API and /v1/completions):
        # a drill's clients send the same request to whatever region they are answered with.
        app.router.add_post("/v1/completions", _counted(_openai))
        app.router.add_post("/v1/chat/completions", _counted(_openai))
        app.router.add_post("/generate_stream", _counted(_tgi))
        app.router.add_post("/generate", _counted(_tgi))
    elif kind == "triton":
        app.router.add_post("/v2/models/{model}/generate_stream", _counted(_triton))
        app.router.add_post("/v2/models/{model}/generate", _counted(_triton))
