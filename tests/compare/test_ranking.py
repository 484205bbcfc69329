"""Pareto fronts and per-criterion winners on hand-made points."""

from __future__ import annotations

import math

from tunelab.compare.ranking import best_by, pareto_front


def test_front_keeps_only_undominated_points():
    points = {
        "cheap_bad": (10, 0.2),
        "mid": (100, 0.6),
        "dominated": (200, 0.5),  # costs more than mid and is worse
        "expensive_best": (1000, 0.9),
        "pricier_same": (2000, 0.9),  # same quality as expensive_best, at a higher cost
    }
    assert pareto_front(points) == ["cheap_bad", "mid", "expensive_best"]


def test_front_when_lower_quality_is_better():
    points = {"a": (1, 3.0), "b": (2, 2.0), "c": (3, 2.5), "d": (4, 1.0)}
    assert pareto_front(points, higher_is_better=False) == ["a", "b", "d"]


def test_exact_ties_are_all_on_the_front():
    assert pareto_front({"x": (5, 1.0), "y": (5, 1.0)}) == ["x", "y"]


def test_one_point_dominates_all():
    assert pareto_front({"best": (1, 9.0), "b": (2, 8.0), "c": (3, 1.0)}) == ["best"]


def test_missing_values_take_no_part():
    points = {"ok": (3, 0.5), "none": (None, 0.9), "nan": (1, math.nan)}
    assert pareto_front(points) == ["ok"]
    assert pareto_front({}) == []


def test_best_by_direction_and_ties():
    values = {"a": 3.0, "b": 1.0, "c": 1.0, "d": None}
    assert best_by(values, higher_is_better=False) == ["b", "c"]
    assert best_by(values, higher_is_better=True) == ["a"]
    assert best_by({"d": None}, higher_is_better=True) == []
