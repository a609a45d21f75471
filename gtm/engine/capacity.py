"""Target weights (0-255) from spare capacity or from static weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

MAX_WEIGHT = 255


def capacity_weights(spare: Mapping[str, float], available: Sequence[str]) -> dict[str, int]:
    """Weights proportional to spare capacity, scaled so the largest is 255.

    Args:
        spare: spare capacity per region (any unit, the same for all; >= 0).
        available: regions that may take traffic.

    Returns:
        A weight 1-255 per available region: a serving region with no spare capacity keeps
        weight 1 (it is healthy, only full); when no region reports spare capacity, all get
        255 (equal shares).
    """
    top = max((spare.get(r, 0.0) for r in available), default=0.0)
    if top <= 0:
        return dict.fromkeys(available, MAX_WEIGHT)
    return {r: max(1, round(MAX_WEIGHT * spare.get(r, 0.0) / top)) for r in available}
