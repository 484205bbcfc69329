"""Mixture arithmetic on hand-made task sizes: FLAN's capped proportional rule, T5's
temperature, explicit weights, the replay share and the whole-mixture limit."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tunelab.data.mixture import apportion, draw_rows, mixture_counts, mixture_rates
from tunelab.task_config import MixtureConfig


def test_proportional_caps_large_tasks():
    sizes = {"big": 10_000, "mid": 2_000, "small": 500}
    counts = mixture_counts(sizes, MixtureConfig(strategy="proportional", cap=3_000))
    assert counts == {"big": 3_000, "mid": 2_000, "small": 500}


def test_proportional_without_cap_keeps_sizes():
    sizes = {"big": 10_000, "small": 500}
    assert mixture_counts(sizes, MixtureConfig(cap=None)) == sizes


def test_temperature_flattens_by_root():
    # sqrt(900) : sqrt(100) : sqrt(400) = 30 : 10 : 20 of 1400 examples
    sizes = {"a": 900, "b": 100, "c": 400}
    cfg = MixtureConfig(strategy="temperature", temperature=2.0, cap=None)
    rates = mixture_rates(sizes, cfg)
    assert rates == pytest.approx({"a": 0.5, "b": 1 / 6, "c": 1 / 3})
    # 700, 233.33, 466.67: the one example left goes to the largest remainder (c)
    assert mixture_counts(sizes, cfg) == {"a": 700, "b": 233, "c": 467}


def test_temperature_one_is_proportional():
    sizes = {"a": 900, "b": 100, "c": 400}
    hot = MixtureConfig(strategy="temperature", temperature=1.0, cap=500)
    assert mixture_counts(sizes, hot) == mixture_counts(sizes, MixtureConfig(cap=500))


def test_explicit_weights():
    cfg = MixtureConfig(strategy="weights", total=100)
    counts = mixture_counts({"a": 5, "b": 5000}, cfg, weights={"a": 1.0, "b": 3.0})
    assert counts == {"a": 25, "b": 75}  # the small task is repeated 5 times over


def test_replay_gets_its_share_of_the_whole_mixture():
    sizes = {"a": 600, "b": 300, "replay": 5_000}
    cfg = MixtureConfig(cap=3_000, replay_share=0.1)
    counts = mixture_counts(sizes, cfg, replay={"replay"})
    assert counts == {"a": 600, "b": 300, "replay": 100}  # 100 of 1000 = 10 %
    limited = mixture_counts(sizes, cfg, replay={"replay"}, limit=100)
    assert limited == {"a": 60, "b": 30, "replay": 10}


def test_apportion_sums_exactly():
    rng = random.Random(0)
    for _ in range(200):
        rates = {str(i): rng.random() for i in range(rng.randint(1, 6))}
        total = sum(rates.values())
        rates = {name: value / total for name, value in rates.items()}
        count = rng.randint(0, 1000)
        counts = apportion(count, rates)
        assert sum(counts.values()) == count
        assert all(abs(counts[n] - count * r) < 1 for n, r in rates.items())


def test_draw_rows_repeats_whole_passes():
    order = draw_rows(3, 7, random.Random(0))
    assert len(order) == 7
    assert Counter(order[:6]) == {0: 2, 1: 2, 2: 2}
    assert sorted(draw_rows(10, 4, random.Random(0))) == sorted(
        set(draw_rows(10, 4, random.Random(0)))
    )
