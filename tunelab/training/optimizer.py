"""The optimizer every run trains with: AdamW over the method's parameter groups.

torch's fused AdamW kernel (one pass over each parameter and its two moments, on CPU as on
GPU) is used wherever it applies; on 2 CPU cores it steps 135M parameters about 5x faster than
the default per-parameter loop (95 ms against 553 ms), which is a real share of a full
fine-tuning step. transformers' Trainer picks the same kernel by default on torch >= 2.8. It is
left out under FSDP, whose sharded parameters the loop-based AdamW is tested with.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from tunelab.training import fsdp


def build_optimizer(
    groups: Iterable[dict[str, Any]], lr: float, betas: tuple[float, float]
) -> torch.optim.AdamW:
    """AdamW over `groups` (each with its own lr / weight decay), fused where it applies."""
    groups = list(groups)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=_fusable(groups))


def _fusable(groups: list[dict[str, Any]]) -> bool:
    """The fused kernel takes floating-point tensors on one kind of device it supports."""
    if fsdp.requested():
        return False
    params = [p for group in groups for p in group["params"]]
    devices = {p.device.type for p in params}
    return (
        len(devices) == 1
        and devices <= {"cpu", "cuda", "mps"}
        and all(p.is_floating_point() for p in params)
    )
