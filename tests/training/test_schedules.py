"""Learning-rate schedules: values at known points, and the LambdaLR applies them per group."""

from __future__ import annotations

import math

import pytest
import torch

from tunelab.config import TrainConfig
from tunelab.training.schedules import build_scheduler, lr_lambda, warmup_steps_for


def values(name: str, total: int, warmup: int = 0, **kwargs) -> list[float]:
    multiplier = lr_lambda(name, total, warmup, **kwargs)
    return [multiplier(step) for step in range(total)]


def test_constant_with_and_without_warmup():
    assert values("constant", 5) == [1.0] * 5
    assert values("constant", 6, warmup=3) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_linear_warms_up_then_decays_to_zero():
    assert values("linear", 10) == pytest.approx([1 - s / 10 for s in range(10)])
    warm = values("linear", 12, warmup=2)
    assert warm[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert warm[7] == pytest.approx(0.5)  # halfway through the 10 decay steps
    assert lr_lambda("linear", 12, 2)(12) == 0.0


def test_cosine_halfway_and_end():
    multiplier = lr_lambda("cosine", 20, 4)
    assert multiplier(4) == pytest.approx(1.0)
    assert multiplier(12) == pytest.approx(0.5)
    assert multiplier(20) == pytest.approx(0.0, abs=1e-12)
    decay = [multiplier(s) for s in range(4, 20)]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))


def test_stlr_matches_howard_and_ruder():
    total, cut_frac, ratio = 100, 0.1, 32.0
    stlr = values("stlr", total, cut_frac=cut_frac, ratio=ratio)
    cut = math.floor(total * cut_frac)
    assert stlr[0] == pytest.approx(1 / ratio)  # starts at the minimum
    assert max(stlr) == pytest.approx(1.0) and stlr.index(max(stlr)) == cut  # peak at cut
    assert stlr[5] == pytest.approx((1 + 0.5 * (ratio - 1)) / ratio)  # halfway up
    p = 1 - (55 - cut) / (cut * (1 / cut_frac - 1))
    assert stlr[55] == pytest.approx((1 + p * (ratio - 1)) / ratio)  # halfway down
    assert min(stlr) >= 1 / ratio
    assert lr_lambda("stlr", total, cut_frac=cut_frac, ratio=ratio)(total) == pytest.approx(
        1 / ratio
    )


def test_stlr_survives_tiny_runs():
    assert values("stlr", 3, cut_frac=0.1, ratio=4.0)[1] == pytest.approx(1.0)  # cut is >= 1


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_lambda("step", 10)


def test_warmup_from_ratio_or_steps():
    assert warmup_steps_for(TrainConfig(warmup_ratio=0.1), 50) == 5
    assert warmup_steps_for(TrainConfig(warmup_steps=3, warmup_ratio=0.5), 50) == 3


def test_build_scheduler_scales_every_group_by_its_own_lr():
    weights = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.SGD(
        [{"params": [weights[0]], "lr": 1.0}, {"params": [weights[1]], "lr": 0.1}]
    )
    scheduler = build_scheduler(optimizer, TrainConfig(schedule="linear", warmup_steps=1), 5)
    seen = []
    for _ in range(5):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx([0.5, 0.05])
    assert seen[1] == pytest.approx([1.0, 0.1])
    assert seen[4] == pytest.approx([0.25, 0.025])
