"""Causal language-modelling loss on labelled tokens only.

Labels sit at the same positions as `input_ids` (-100 = no loss); the token at position t is
predicted from the hidden state at t-1. Returns a *sum* and a token count so that gradient
accumulation and evaluation can average over all tokens of a window exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in MODEL_INPUTS if batch.get(k) is not None}


def token_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of token cross-entropies, number of labelled tokens) for one batch."""
    labels = batch["labels"]  # (B, T)
    targets = labels[:, 1:]  # (B, T-1): token t+1 is predicted at t
    keep = targets != IGNORE
    n_tokens = int(keep.sum())
    inputs = model_inputs(batch)
    try:
        # Only the hidden states that predict a labelled token need the vocabulary projection.
        positions = keep.any(dim=0).nonzero().squeeze(-1)  # (K,)
        out = model(**inputs, logits_to_keep=positions, use_cache=False)
        logits = out.logits  # (B, K, V)
        targets = targets[:, positions]
    except TypeError:  # models or wrappers without logits_to_keep
        out = model(**inputs, use_cache=False)
        length = labels.shape[1]
        logits = out.logits[:, -length:][:, :-1]  # prompt methods prepend virtual tokens
    flat_targets = targets.reshape(-1)
    mask = flat_targets != IGNORE
    logits = logits.reshape(-1, logits.shape[-1])[mask]  # (N, V)
    loss = F.cross_entropy(logits.float(), flat_targets[mask], reduction="sum")
    return loss, n_tokens
