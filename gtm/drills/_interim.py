"""TEMPORARY stand-ins for ``gtm.drills.resolve.resolve`` and ``gtm.agent.completion.complete``
(being written on the h10-infra branch) with the same signatures; removed once they land."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import aiohttp

from gtm.providers.dnsclient import query


@dataclass
class Resolution:
    addresses: list[str] = field(default_factory=list)
    ttl: int = 0
    elapsed_ms: float = 0.0
    rcode: str = ""
    error: str = ""


async def resolve(resolver: tuple[str, int], fqdn: str, subnet: str | None, timeout_s: float) -> Resolution:
    t0 = time.monotonic()
    try:
        resp = await query(resolver[0], resolver[1], fqdn, "A", client_subnet=subnet, timeout=timeout_s)
    except Exception as exc:
        return Resolution(elapsed_ms=(time.monotonic() - t0) * 1000, error=f"{type(exc).__name__}: {exc}")
    out = Resolution(elapsed_ms=(time.monotonic() - t0) * 1000, rcode=str(resp.rcode()))
    for rrset in resp.answer:
        out.ttl = rrset.ttl
        out.addresses += [rd.to_text() for rd in rrset if rd.rdtype == 1]
    return out


@dataclass
class Completion:
    status: int | None = None
    ok: bool = False
    text: str = ""
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    error: str = ""
    timed_out: bool = False
    refused: bool = False


async def complete(session: aiohttp.ClientSession, base_url: str, kind: str, *, model: str | None, prompt: str,
                   max_tokens: int, timeout_s: float) -> Completion:
    t0 = time.monotonic()
    path, body = ("/generate", {"inputs": prompt, "parameters": {"max_new_tokens": max_tokens}}) if kind == "tgi" \
        else ("/v1/completions", {"model": model, "prompt": prompt, "max_tokens": max_tokens})
    try:
        async with session.post(base_url.rstrip("/") + path, json=body,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            await resp.read()
            ms = (time.monotonic() - t0) * 1000
            return Completion(status=resp.status, ok=resp.status == 200, latency_ms=ms, ttft_ms=ms,
                              error="" if resp.status == 200 else f"HTTP {resp.status}")
    except TimeoutError:
        return Completion(latency_ms=(time.monotonic() - t0) * 1000, timed_out=True, error="timeout")
    except aiohttp.ClientConnectorError as exc:
        return Completion(latency_ms=(time.monotonic() - t0) * 1000, refused=True, error=str(exc))
    except aiohttp.ClientError as exc:
        return Completion(latency_ms=(time.monotonic() - t0) * 1000, error=f"{type(exc).__name__}: {exc}")
