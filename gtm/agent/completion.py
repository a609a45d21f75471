"""One completion client: a small real request through a serving engine's API, timed to the
first token. The agent's synthetic probes (``gtm.agent.probe``) and a drill's clients
(``gtm.drills``) both send their requests through :func:`complete`.

===========  ===========================================  ================================
API          request                                      a token is
===========  ===========================================  ================================
completions  ``POST /v1/completions`` (vLLM, SGLang)      ``choices[0].text``
chat         ``POST /v1/chat/completions``                ``choices[0].delta.content``
tgi          ``POST /generate_stream`` (TGI)              ``token.text`` (not ``special``)
triton       ``POST /v2/models/<model>/generate_stream``  ``text_output``
===========  ===========================================  ================================

Requests ask for a streamed answer. Streams are Server-Sent Events (``data: {json}``; OpenAI
style ends with ``data: [DONE]``); a server that ignores ``stream`` and answers one JSON body is
accepted too (its TTFT is then the whole answer's time). **TTFT** is the time from sending the
request to the first event that carries a non-empty token, milliseconds.

A completion is not ``ok`` on: no first token within the timeout, or no end of the answer
within it (``timed_out``); a connection that could not be made or was closed or reset by the
server (``refused``); an HTTP status other than 200; an event or body that is not the API's
JSON shape; an ``error`` event; an empty answer. ``error`` then says why (no prefix: callers add
their own). Checking the text against an expectation is the caller's business.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from gtm.models.region import DEFAULT_PROBE_API, ProbeApi

__all__ = ["CLIENT_HEADER", "Completion", "CompletionFailedError", "complete", "completion_request", "token_of"]

CLIENT_HEADER = "X-GTM-Client"
"""Header naming who sends a request (a drill's client population, e.g. ``drill-7f3a/eu``); the
simulator counts completions per value (``GET /_sim/state`` ``completions_by_client``)."""


class CompletionFailedError(Exception):
    """An answer is not what the API promises (the message is the failure reason)."""


@dataclass(frozen=True, slots=True)
class Completion:
    """The outcome of one completion request.

    Attributes:
        ok: a well-formed, non-empty answer arrived within the timeout with HTTP 200.
        status: the HTTP status, or None when no response arrived (refused, timed out first).
        text: the generated text received (possibly partial).
        ttft_ms: time to the first token, milliseconds, or None when none arrived.
        latency_ms: time to the end of the answer (or to the failure), milliseconds.
        error: why it failed (e.g. ``HTTP 503: ...``, ``no first token within 2s``); "" when ok.
        timed_out: it failed by its deadline (no first token or no end in time).
        refused: the connection could not be made, or the server closed or reset it before the
            answer ended (a dead fleet: connection refused / reset).
    """

    ok: bool
    status: int | None
    text: str
    ttft_ms: float | None
    latency_ms: float
    error: str = ""
    timed_out: bool = False
    refused: bool = False


def completion_request(base_url: str, api: ProbeApi, *, model: str | None, prompt: str,
                       max_tokens: int) -> tuple[str, dict[str, Any]]:
    """The URL and JSON body of one streamed completion request.

    Args:
        base_url: the server's base URL, e.g. ``http://127.0.1.1:8000``.
        api: which API to call (``completions``, ``chat``, ``tgi``, ``triton``).
        model: model name to send; None leaves it out (OpenAI servers then use their only model).
        prompt: the prompt.
        max_tokens: tokens asked for.

    Raises:
        ValueError: a Triton request without a model (Triton's URL needs one).
    """
    base = base_url.rstrip("/")
    if api == "tgi":
        return f"{base}/generate_stream", {"inputs": prompt, "parameters": {"max_new_tokens": max_tokens}}
    if api == "triton":
        if not model:
            raise ValueError("a Triton request needs a model")
        return (f"{base}/v2/models/{model}/generate_stream",
                {"text_input": prompt, "max_tokens": max_tokens, "stream": True})
    body: dict[str, Any] = {"max_tokens": max_tokens, "stream": True, "temperature": 0}
    if model:
        body["model"] = model
    if api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
        return f"{base}/v1/chat/completions", body
    body["prompt"] = prompt
    return f"{base}/v1/completions", body


def token_of(api: str, event: object, *, streamed: bool = True) -> str:
    """The generated text one event (or a whole non-streamed body) carries ("" for none).

    Raises:
        CompletionFailedError: the event is not the API's shape, or is an error event.
    """
    if not isinstance(event, dict):
        raise CompletionFailedError(f"malformed answer: expected a JSON object, got {type(event).__name__}")
    if "error" in event:
        err = event["error"]
        msg = err.get("message", err) if isinstance(err, dict) else err
        raise CompletionFailedError(f"engine error: {str(msg)[:200]}")
    try:
        if api in ("completions", "chat"):
            choice = event["choices"][0] if event["choices"] else {}
            if api == "completions":
                value = choice.get("text", "")
            else:
                part = choice.get("delta" if streamed else "message") or {}
                value = part.get("content") or ""
        elif api == "tgi":
            if streamed:
                tok = event["token"]
                value = "" if tok.get("special") else tok["text"]
            else:
                value = event["generated_text"]
        else:  # triton
            value = event["text_output"]
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise CompletionFailedError(f"malformed answer: missing {exc} in {json.dumps(event)[:120]}") from exc
    if not isinstance(value, str):
        raise CompletionFailedError(f"malformed answer: token is {type(value).__name__}, not text")
    return value


async def complete(
    session: aiohttp.ClientSession,
    base_url: str,
    kind: str,
    *,
    model: str | None,
    prompt: str = "Say OK.",
    max_tokens: int = 4,
    timeout_s: float,
    api: ProbeApi | None = None,
    headers: dict[str, str] | None = None,
) -> Completion:
    """Send one streamed completion request and judge the answer. Never raises on a bad server.

    Args:
        session: a shared HTTP session (this request sets its own timeout; the session's
            connection pool is reused).
        base_url: the server's base URL, e.g. ``http://127.0.1.1:8000``.
        kind: the engine kind (``vllm``, ``sglang``, ``tgi``, ``triton``): picks the API when
            ``api`` is None (``DEFAULT_PROBE_API``).
        model: model name to send; None leaves it out (Triton: required).
        prompt: the prompt.
        max_tokens: tokens asked for.
        timeout_s: deadline for the whole answer (first token and end), seconds.
        api: the API to call; None uses the kind's default.
        headers: extra request headers.

    Returns:
        The completion; ``error`` says why it failed.

    Raises:
        ValueError: ``kind`` is unknown and ``api`` is None.
    """
    if api is None:
        if kind not in DEFAULT_PROBE_API:
            raise ValueError(f"no completion API for kind {kind!r}")
        api = DEFAULT_PROBE_API[kind]
    t0 = time.monotonic()
    first: float | None = None
    status: int | None = None
    pieces: list[str] = []

    def result(error: str = "", *, timed_out: bool = False, refused: bool = False) -> Completion:
        ttft = None if first is None else round((first - t0) * 1000.0, 3)
        return Completion(ok=not error, status=status, text="".join(pieces), ttft_ms=ttft,
                          latency_ms=round((time.monotonic() - t0) * 1000.0, 3), error=error,
                          timed_out=timed_out, refused=refused)

    try:
        url, body = completion_request(base_url, api, model=model, prompt=prompt, max_tokens=max_tokens)
    except ValueError as exc:
        return result(str(exc))
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=None),
                                    headers={"Accept": "text/event-stream", **(headers or {})}) as resp:
                status = resp.status
                if resp.status != 200:
                    detail = (await resp.text(errors="replace"))[:200].strip()
                    return result(f"HTTP {resp.status}" + (f": {detail}" if detail else ""))
                if "text/event-stream" not in resp.headers.get("Content-Type", ""):
                    raw = await resp.read()
                    try:
                        doc = json.loads(raw)
                    except ValueError:
                        return result(f"malformed answer: not JSON: {raw[:80]!r}")
                    pieces.append(token_of(api, doc, streamed=False))
                    first = time.monotonic()
                else:
                    async for line in resp.content:
                        data = _sse_data(line)
                        if data is None:
                            continue
                        if data == "[DONE]":
                            break
                        try:
                            event = json.loads(data)
                        except ValueError:
                            return result(f"malformed answer: event is not JSON: {data[:80]!r}")
                        tok = token_of(api, event)
                        if tok and first is None:
                            first = time.monotonic()
                        pieces.append(tok)
    except TimeoutError:
        if first is None:
            return result(f"no first token within {timeout_s:g}s", timed_out=True)
        return result(f"answer incomplete after {timeout_s:g}s (first token after {(first - t0) * 1000:.0f} ms)",
                      timed_out=True)
    except CompletionFailedError as exc:
        return result(str(exc))
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
        return result(f"{type(exc).__name__}: {exc}"[:300], refused=True)
    except aiohttp.ClientError as exc:
        return result(f"{type(exc).__name__}: {exc}"[:300])
    if not "".join(pieces).strip():
        return result("empty answer")
    return result()


def _sse_data(line: bytes) -> str | None:
    """The payload of an SSE ``data:`` line (TGI writes ``data:`` without a blank), else None."""
    text = line.decode("utf-8", errors="replace").strip()
    if not text.startswith("data:"):
        return None
    return text[5:].strip()
