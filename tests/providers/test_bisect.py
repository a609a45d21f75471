"""``gtm.providers.bisect.isolate``: which units a bisection applies, refuses or leaves unsent,
and how many requests it takes (against a scripted atomic "provider": a request is refused when
it holds a bad unit)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from gtm.errors import PermanentProviderError, ProviderError, TemporaryProviderError
from gtm.providers.bisect import isolate, isolation_budget


class Atomic:
    """Applies a request whole unless it holds a bad unit (refused, naming the bad ones)."""

    def __init__(self, bad: set[int], fail_on_call: int | None = None) -> None:
        self.bad = bad
        self.fail_on_call = fail_on_call
        self.requests: list[list[int]] = []
        self.applied: list[int] = []

    async def send(self, units: Sequence[int]) -> None:
        self.requests.append(list(units))
        if self.fail_on_call == len(self.requests):
            raise TemporaryProviderError("Throttling: rate exceeded")
        refused = sorted(self.bad & set(units))
        if refused:
            raise PermanentProviderError(f"InvalidChangeBatch: {refused}")
        self.applied.extend(units)


def refusal(exc: ProviderError) -> bool:
    return exc.detail.startswith("InvalidChangeBatch")


@pytest.mark.parametrize("n", [1, 2, 3, 8, 100, 1000])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
async def test_one_refused_unit_costs_at_most_two_calls_per_halving(n: int, where: str) -> None:
    bad = {0 if where == "first" else n - 1 if where == "last" else n // 2}
    provider = Atomic(bad)
    found = await isolate(list(range(n)), "whole batch refused", provider.send, refusal,
                          max_calls=isolation_budget(n))
    assert [u for u, _ in found.refused] == sorted(bad)
    assert found.applied == [u for u in range(n) if u not in bad] == provider.applied
    assert found.unsent == [] and found.stopped is None
    assert found.calls == len(provider.requests)
    assert found.calls <= (2 * math.ceil(math.log2(n)) if n > 1 else 0)


async def test_several_refused_units_are_each_named_with_the_message_of_their_own_request() -> None:
    provider = Atomic({3, 11, 12})
    found = await isolate(list(range(16)), "[3, 11, 12]", provider.send, refusal, max_calls=isolation_budget(16))
    assert found.refused == [(3, "InvalidChangeBatch: [3]"), (11, "InvalidChangeBatch: [11]"),
                             (12, "InvalidChangeBatch: [12]")]
    assert found.applied == [u for u in range(16) if u not in (3, 11, 12)]
    assert found.calls <= isolation_budget(16)


async def test_a_spent_budget_leaves_the_undecided_units_unsent() -> None:
    provider = Atomic(set(range(0, 16, 2)))  # every other unit bad: more than the budget can isolate
    found = await isolate(list(range(16)), "refused", provider.send, refusal, max_calls=4)
    assert found.calls == len(provider.requests) == 4
    assert found.unsent and not set(found.unsent) & set(found.applied)
    assert sorted([*found.applied, *found.unsent, *(u for u, _ in found.refused)]) == list(range(16))
    assert set(found.applied) == set(provider.applied)


async def test_an_error_that_is_not_a_refusal_stops_the_search() -> None:
    provider = Atomic({5}, fail_on_call=2)
    found = await isolate(list(range(8)), "refused", provider.send, refusal, max_calls=isolation_budget(8))
    assert provider.requests == [[0, 1, 2, 3], [4, 5]]  # first half applied; the throttled call ends it
    assert found.applied == [0, 1, 2, 3] and found.unsent == [4, 5, 6, 7] and found.refused == []
    assert isinstance(found.stopped, TemporaryProviderError)
