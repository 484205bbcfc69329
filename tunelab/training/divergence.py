"""Stop a run whose loss or gradient is no longer a finite number, at that step and before
the optimizer writes it into the weights, with what to try; the last good checkpoint stays."""

from __future__ import annotations

import math

import torch

from tunelab.errors import TunelabError
from tunelab.methods import get_method
from tunelab.run import RunFiles
from tunelab.run_config import RunConfig
from tunelab.training.checkpoint import checkpoints


def all_ranks(value: float, accelerator) -> float:
    """The sum over processes (so every process stops at the same step), or `value` alone."""
    if accelerator.num_processes == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(total, reduction="sum"))


class TrainingDiverged(TunelabError):
    """The loss or the gradient stopped being a finite number."""


def check_finite(step: int, loss: float, grad_norm, cfg: RunConfig, files: RunFiles) -> None:
    """Stop at the first step whose loss or gradient norm is NaN or infinite, before the
    optimizer writes it into the weights; the last good checkpoint stays for --resume."""
    what = None
    if not math.isfinite(loss):
        what = f"the loss is {loss}"
    elif (
        grad_norm is not None
        and cfg.train.precision != "fp16"  # fp16's loss scaler skips inf steps by design
        and not math.isfinite(float(grad_norm))
    ):
        what = f"the gradient norm is {float(grad_norm)}"
    if what is None:
        return
    saved = checkpoints(files.checkpoints)
    kept = f"last good checkpoint kept: {saved[0]}" if saved else "no checkpoint was saved"
    lr = cfg.train.lr or get_method(cfg.method.name).default_lr
    raise TrainingDiverged(
        f"step {step}: {what}; training stopped before the weights changed ({kept}); rerun "
        f"with --overwrite and a lower train.lr (now {lr:g}), train.precision=fp32 (now "
        f"{cfg.train.precision}) or a train.max_grad_norm"
    )
