"""Who wins what: the best method per criterion, and the Pareto-optimal methods of a trade-off.

A method is Pareto-optimal for (cost, quality) when no other method is at least as good on
both and strictly better on one: cheaper at equal or better quality, or better at equal or
lower cost. The front is the set of methods worth choosing; every other one is beaten
outright by some method on the front.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

Point = tuple[float, float]  # (cost: lower is better, quality)


def pareto_front(points: Mapping[str, Point], *, higher_is_better: bool = True) -> list[str]:
    """Names of the non-dominated points, ordered by cost. Points with a missing or NaN
    coordinate take no part (a failed method is on no front)."""
    valid = {name: point for name, point in points.items() if _finite(point)}
    sign = 1.0 if higher_is_better else -1.0
    front = [
        name
        for name, (cost, quality) in valid.items()
        if not any(
            _dominates((other_cost, sign * other_quality), (cost, sign * quality))
            for other, (other_cost, other_quality) in valid.items()
            if other != name
        )
    ]
    return sorted(front, key=lambda name: (valid[name][0], name))


def _dominates(first: Point, second: Point) -> bool:
    """`first` (cost, quality to maximise) is no worse than `second` and better in one."""
    no_worse = first[0] <= second[0] and first[1] >= second[1]
    return no_worse and (first[0] < second[0] or first[1] > second[1])


def _finite(point: Point) -> bool:
    return all(value is not None and not math.isnan(value) for value in point)


def best_by(values: Mapping[str, float | None], *, higher_is_better: bool) -> list[str]:
    """Every method tied for the best value (several on a tie; none when no method has one)."""
    present = {
        name: value for name, value in values.items() if value is not None and not math.isnan(value)
    }
    if not present:
        return []
    best = max(present.values()) if higher_is_better else min(present.values())
    return [name for name, value in present.items() if value == best]
