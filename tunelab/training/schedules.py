"""Learning-rate schedules: the multiplier of the peak learning rate at each optimizer step.

Every schedule is a pure function of the 0-based step, so a resumed run recomputes the same
value from the step alone. `build_scheduler` turns one into a `LambdaLR`, which multiplies each
parameter group's own initial lr (so per-group rates, e.g. ULMFiT's discriminative ones, keep
their ratios throughout).

`stlr` is the slanted triangular schedule of Howard & Ruder 2018, "Universal Language Model
Fine-tuning for Text Classification" (https://arxiv.org/abs/1801.06146), eq. 3: a short linear
rise to the peak, then a long linear decay to peak / ratio. It is ULMFiT's schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from tunelab.config import TrainConfig

SCHEDULES = ("constant", "linear", "cosine", "stlr")


def lr_lambda(
    name: str,
    total_steps: int,
    warmup_steps: int = 0,
    *,
    cut_frac: float = 0.1,
    ratio: float = 32.0,
) -> Callable[[int], float]:
    """Multiplier of the peak lr at step s (0-based) for schedule `name`.

    Warmup (constant, linear, cosine) rises as (s + 1) / (warmup + 1), so no step is wasted at
    lr 0 and step `warmup` is the first at the peak. `linear` and `cosine` then fall to 0 at
    step `total_steps`. `stlr` has its own rise and ignores `warmup_steps`.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")
    total = max(1, total_steps)
    warmup = min(max(0, warmup_steps), total)
    if name == "stlr":
        return _slanted_triangular(total, cut_frac, ratio)

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))  # 0 at the peak, 1 at end
        if name == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def _slanted_triangular(total: int, cut_frac: float, ratio: float) -> Callable[[int], float]:
    """Howard & Ruder eq. 3: p rises 0 -> 1 over `cut` steps, then falls 1 -> 0 until `total`;
    the multiplier (1 + p (ratio - 1)) / ratio runs between 1 / ratio and 1."""
    cut = max(1, math.floor(total * cut_frac))
    decay_length = cut * (1.0 / cut_frac - 1.0)  # = total - cut when total * cut_frac is whole

    def multiplier(step: int) -> float:
        if step < cut:
            p = step / cut
        else:
            p = max(0.0, 1.0 - (step - cut) / decay_length)
        return (1.0 + p * (ratio - 1.0)) / ratio

    return multiplier


def warmup_steps_for(train_cfg: TrainConfig, total_steps: int) -> int:
    """`warmup_steps` when set, else round(warmup_ratio * total_steps)."""
    if train_cfg.warmup_steps:
        return train_cfg.warmup_steps
    return round(train_cfg.warmup_ratio * total_steps)


def build_scheduler(optimizer: Optimizer, train_cfg: TrainConfig, total_steps: int) -> LambdaLR:
    """A LambdaLR applying `train_cfg.schedule` to every parameter group's own lr."""
    multiplier = lr_lambda(
        train_cfg.schedule,
        total_steps,
        warmup_steps_for(train_cfg, total_steps),
        cut_frac=train_cfg.stlr_cut_frac,
        ratio=train_cfg.stlr_ratio,
    )
    return LambdaLR(optimizer, multiplier)
