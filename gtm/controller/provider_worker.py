"""One worker per record-holding DNS provider: publishes the newest desired state on its own,
so a slow or failing provider never blocks the control loop or the other providers.

Latest wins: while a publish runs, newer states replace the pending one. A temporary failure
(throttling, 5xx) retries with capped exponential backoff; a permanent one waits for the next
state (or ``retry_max_s``). A partial apply (``PartialApplyError``: some zones, batches or
record sets refused, the others applied) retries with the same backoff as a temporary failure;
the retry plans again from what the provider holds, so only what failed is sent again. What
applied and what failed (and why) is kept in the applied info (``partial``, shown by ``gtm
status``), counted for ``/metrics`` (``partials``, ``failed_units``) and audited (action
``provider partial``) each time the set of failed units changes, and once more (``provider
partial cleared``) when a publish succeeds again. Nothing is sent while the routing digest
equals the last one applied, so a steady state makes no API call; ``resync_s`` re-publishes
the current state now and then to repair drift (0 disables it). Only the leader feeds workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from gtm.errors import PartialApplyError, ProviderError, StoreError, TemporaryProviderError
from gtm.log import get_logger
from gtm.models.audit import AuditEntry
from gtm.models.plan import DesiredState
from gtm.providers.base import Publisher
from gtm.store import Store

log = get_logger("controller.providers")


class ProviderWorker:
    """Publishes desired states to one provider.

    Args:
        provider: the provider (anything with ``name`` and ``async publish(state)``).
        store: where ``gtm:{ns}:applied:<name>`` is recorded.
        may_write: returns False when this replica must not write (lost the lease).
        fencing_token: returns the current fencing token (recorded with each apply).
        retry_initial_s / retry_max_s: backoff for temporary failures, seconds.
        resync_s: re-publish an unchanged state after this long, seconds (0: never).
    """

    def __init__(
        self,
        provider: Publisher,
        store: Store,
        *,
        may_write: Callable[[], bool] = lambda: True,
        fencing_token: Callable[[], int | None] = lambda: None,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        resync_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.name = provider.name
        self.store = store
        self.may_write = may_write
        self.fencing_token = fencing_token
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.resync_s = resync_s
        self.clock = clock
        self._pending: DesiredState | None = None
        self._wake = asyncio.Event()
        self._new = asyncio.Event()
        self._failed_digest: str | None = None
        self.applied_digest: str | None = None
        self.applied_at: float = 0.0
        self.info: dict[str, Any] = {}
        self.publishes = 0
        self.errors = 0
        self.attempts = 0
        """Calls to the provider's ``publish`` (each observes, and writes if needed)."""
        self.partials = 0
        """Publishes that applied some units and not others (``PartialApplyError``)."""
        self.failed_units = 0
        """Units (zones, batches, record sets) the last partial apply left unapplied; 0 after a success."""
        self._audited_failures: dict[str, str] | None = None

    def submit(self, state: DesiredState) -> None:
        """Hand over the newest desired state (replaces any pending one); never blocks.

        A state with new routing also cuts short a backoff after a failure.
        """
        self._pending = state
        self._wake.set()
        if state.routing_digest() != self._failed_digest:
            self._new.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set. Never raises."""
        with contextlib.suppress(StoreError):
            last = await self.store.get_applied(self.name)
            if last and hasattr(self.provider, "last_policy_digest"):
                # A restarted controller under the same policy must not be held by the unsafe-plan
                # gate while it publishes a failover that happened meanwhile.
                self.provider.last_policy_digest = last.get("policy_digest", "")
            if last:
                self.info = dict(last)
        backoff = self.retry_initial_s
        current: DesiredState | None = None
        while not stop.is_set():
            timeout = self.resync_s if self.resync_s > 0 else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait(stop), timeout=timeout)
            if stop.is_set():
                return
            self._wake.clear()
            if self._pending is not None:
                current, self._pending = self._pending, None
            if current is None or not current.services or not self.may_write():
                continue
            digest = current.routing_digest()
            resync_due = self.resync_s > 0 and self.clock() - self.applied_at >= self.resync_s
            if digest == self.applied_digest and not resync_due:
                continue
            self.attempts += 1
            try:
                wrote = await self.provider.publish(current)
            except PartialApplyError as exc:
                self.errors += 1
                self.partials += 1
                self.failed_units = len(exc.failed)
                self._failed_digest = digest
                await self._record(current, error=f"{type(exc).__name__}: {exc}", partial=exc)
                await self._audit_partial(exc)
                delay = min(self.retry_max_s, max(backoff, getattr(exc, "delay", 0.0)))
                log.warning("run: %s: partial apply, retrying what failed in %.1fs: %s", self.name, delay, exc)
                backoff = min(backoff * 2, self.retry_max_s)
                self._pending = self._pending or current
                await self._sleep(stop, delay)
                continue
            except ProviderError as exc:
                self.errors += 1
                self._failed_digest = digest
                await self._record(current, error=f"{type(exc).__name__}: {exc}")
                delay = min(self.retry_max_s, max(backoff, getattr(exc, "delay", 0.0)))
                if isinstance(exc, TemporaryProviderError):
                    log.warning("run: %s: temporary failure, retrying in %.1fs: %s", self.name, delay, exc)
                    backoff = min(backoff * 2, self.retry_max_s)
                else:
                    log.error("run: %s: %s (retrying in %.0fs or on the next change)", self.name, exc, self.retry_max_s)
                    delay = self.retry_max_s
                self._pending = self._pending or current
                await self._sleep(stop, delay)
                continue
            except Exception as exc:  # a provider bug must not kill the worker
                self.errors += 1
                self._failed_digest = digest
                log.exception("run: %s: unexpected failure", self.name)
                await self._record(current, error=f"{type(exc).__name__}: {exc}")
                self._pending = self._pending or current
                await self._sleep(stop, self.retry_max_s)
                continue
            backoff = self.retry_initial_s
            self.failed_units = 0
            self._failed_digest = None
            self.applied_digest = digest
            self.applied_at = self.clock()
            if wrote:
                self.publishes += 1
            await self._record(current, error="", wrote=wrote)
            if self._audited_failures is not None:
                await self._audit_partial(None)

    async def _wait(self, stop: asyncio.Event) -> None:
        waiter = asyncio.create_task(self._wake.wait())
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        """Back off for ``seconds``, or less when stopped or when new routing arrives."""
        self._new.clear()
        if self._pending is not None and self._pending.routing_digest() != self._failed_digest:
            self._new.set()
        waiter = asyncio.create_task(self._new.wait())
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()
        self._wake.set()  # try again (with the newest pending state)

    async def _audit_partial(self, exc: PartialApplyError | None) -> None:
        """Audit a partial apply whose failed units differ from the last one audited, or (``exc``
        None) that the provider holds everything again."""
        failed = dict(exc.failed) if exc is not None else None
        if failed == self._audited_failures:
            return
        if exc is not None:
            action = "provider partial"
            reason = f"{self.name}: {len(exc.applied)} applied, {len(exc.failed)} failed"
            note = "failed: " + "; ".join(f"{unit} ({why})" for unit, why in exc.failed.items())
        else:
            action, reason = "provider partial cleared", f"{self.name}: every unit applied"
            note = "was failing: " + ", ".join(self._audited_failures or {})
        entry = AuditEntry(ts=self.clock(), action=action, reason=reason, actor="controller", via="controller",
                           fencing_token=self.fencing_token(), note=note)
        try:
            await self.store.append_audit(entry)
        except StoreError as err:
            log.warning("_audit_partial: %s: %s", self.name, err)
            return
        self._audited_failures = failed

    async def _record(
        self, state: DesiredState, *, error: str, wrote: bool = False, partial: PartialApplyError | None = None
    ) -> None:
        now = self.clock()
        info = dict(self.info)
        info["partial"] = None if partial is None else {
            "applied": list(partial.applied), "failed": dict(partial.failed), "temporary": partial.temporary,
            "at": now, "generation": state.generation,
        }
        if not error:
            info.update({
                "generation": state.generation, "digest": state.routing_digest(), "applied_at": now,
                "lag_s": round(max(0.0, now - state.generated_at), 3), "fencing_token": self.fencing_token(),
                "wrote": wrote, "policy_digest": state.policy_digest,
            })
        info["last_error"] = error
        info["last_error_at"] = now if error else info.get("last_error_at")
        info["wanted_generation"] = state.generation
        self.info = info
        with contextlib.suppress(StoreError):
            await self.store.put_applied(self.name, info)
