"""Tiny random llama models for the evaluation tests, with weights scaled up so greedy
continuations vary from token to token (at the default init they repeat the last token, which
would hide padding and ordering bugs)."""

from __future__ import annotations

import pytest
import torch

from tunelab.models.tiny import random_model


def spread_model(seed: int = 0):
    """(model, tokenizer): tiny llama whose matrices are redrawn with std 0.3."""
    model, tokenizer = random_model("llama", seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model, tokenizer


@pytest.fixture(scope="module")
def tiny():
    """Shared tiny model; tests must not wrap or modify it (use `spread_model()` for that)."""
    return spread_model()


@pytest.fixture
def fresh():
    """A new (model, tokenizer) per test, free to wrap with PEFT or to modify."""
    return spread_model()
