"""Inference context shared by generation and loss evaluation.

`inference(model)` switches every module to eval mode (no dropout) under
`torch.inference_mode()` and afterwards restores each module's own `training` flag, so a
model that was half in eval mode on purpose comes back exactly as it went in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def inference(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode + inference mode for the duration; every module's mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        for module, training in modes:
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (inputs are moved there)."""
    return next(model.parameters()).device
