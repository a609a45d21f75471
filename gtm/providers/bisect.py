"""Find the units a provider refused in a rejected atomic request, by bisection.

A provider that applies changes in atomic requests (Route 53's ``ChangeResourceRecordSets``)
gets the whole request refused for one bad unit. ``isolate`` splits the refused request in two,
sends the first half, and recurses: a half that is accepted is applied, a half that is refused
again is split again, down to single units, which are the refused ones. When the first half of
a refused request is accepted whole, the second half is known to hold a refused unit and is
split without being sent; a single unit known to be refused is not sent again (the reason is the
message of the smallest refused request that held it). With one refused unit among ``n`` this
costs at most ``2 * ceil(log2(n))`` extra requests; ``max_calls`` bounds the total, and units
still undecided when it is spent are reported as not sent.

Units must be independent of each other (no unit's change needs another unit's change in the
same request), and the order of ``units`` is kept: the halves are sent first half first.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gtm.errors import ProviderError

__all__ = ["Isolation", "isolate", "isolation_budget"]

T = TypeVar("T")


@dataclass
class Isolation(Generic[T]):
    """What ``isolate`` found, every unit in exactly one list, each list in the units' order.

    Attributes:
        applied: units sent in an accepted request.
        refused: (unit, reason) for units refused on their own (reason: the provider's message).
        unsent: units never decided: the budget was spent, or ``stopped`` ended the search.
        stopped: an error that is not a refusal (throttling storm, access denied): nothing more
            was sent after it.
        calls: requests made.
    """

    applied: list[T] = field(default_factory=list)
    refused: list[tuple[T, str]] = field(default_factory=list)
    unsent: list[T] = field(default_factory=list)
    stopped: ProviderError | None = None
    calls: int = 0


def isolation_budget(units: int, offenders: int = 3) -> int:
    """Extra requests allowed to isolate up to ``offenders`` refused units among ``units``:
    ``2 * ceil(log2(units))`` each (0 for a single unit: it is refused as it is)."""
    return 0 if units <= 1 else 2 * math.ceil(math.log2(units)) * max(1, offenders)


async def isolate(
    units: Sequence[T],
    reason: str,
    send: Callable[[Sequence[T]], Awaitable[None]],
    is_refusal: Callable[[ProviderError], bool],
    *,
    max_calls: int,
) -> Isolation[T]:
    """Split ``units``, refused together with ``reason``, until every unit is applied or refused.

    Args:
        units: the units of the refused request, in request order (at least one).
        reason: the provider's message for that refusal.
        send: sends the given units as one atomic request; raises ``ProviderError`` when refused.
        is_refusal: whether an error from ``send`` refuses the request's content (then it is
            split further); any other error stops the search.
        max_calls: most requests to make (see ``isolation_budget``).

    Returns:
        The ``Isolation``; ``isolate`` itself raises nothing but what ``send`` raises outside
        ``ProviderError``.
    """
    result: Isolation[T] = Isolation()

    async def search(part: Sequence[T], known_refused: bool, why: str) -> None:
        if result.stopped is not None:
            result.unsent.extend(part)
            return
        if not known_refused:
            if result.calls >= max_calls:
                result.unsent.extend(part)
                return
            result.calls += 1
            try:
                await send(part)
            except ProviderError as exc:
                if not is_refusal(exc):
                    result.stopped = exc
                    result.unsent.extend(part)
                    return
                why = exc.detail
            else:
                result.applied.extend(part)
                return
        if len(part) == 1:
            result.refused.append((part[0], why))
            return
        mid = len(part) // 2
        refused, unsent = len(result.refused), len(result.unsent)
        await search(part[:mid], False, why)
        first_half_clean = (
            result.stopped is None and len(result.refused) == refused and len(result.unsent) == unsent
        )
        await search(part[mid:], first_half_clean, why)

    await search(list(units), True, reason)
    return result
