"""Causal language-modelling loss on labelled tokens only, without full-vocabulary logits.

Labels sit at the same positions as `input_ids` (-100 = no loss); the token at position t is
predicted from the hidden state at t-1. Returns a *sum* and a token count so that gradient
accumulation and evaluation can average over all tokens of a window exactly.

The vocabulary projection is the largest activation of a small model: (tokens, V) floats, with
V = 49k (SmolLM2) to 250k (BLOOM, Gemma), kept for backward together with its softmax. Here the
model runs with its head bypassed (a pre-hook hands the head an empty input and keeps the final
hidden states), only the hidden states that predict a labelled token are kept (the prompt and
padding never meet the head), and `linear_cross_entropy` projects and scores them a chunk of
rows at a time, computing each chunk's gradient right away, so at most one (chunk, V) block of
logits exists at any moment, in training and in evaluation alike. Inside the training fast
paths a packed row also stores the prompt prefix its examples share once
(`tunelab.training.packed`); the labelled tokens and so the loss are the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tunelab.compat import accepts_logits_to_keep, fast_paths_enabled
from tunelab.data.types import IGNORE
from tunelab.training.packed import (
    per_example_attention,
    prefix_tuning_row,
    share_prefix,
    shares_prefixes,
    virtual_token_row,
)

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")
CHUNK_ELEMENTS = 2**23  # logits per chunk (32 MiB in fp32): rows = CHUNK_ELEMENTS // V


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in MODEL_INPUTS if batch.get(k) is not None}


def token_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of token cross-entropies, number of labelled tokens) for one batch."""
    if shares_prefixes(model):  # the model reads rows whose examples share a prompt prefix
        batch = share_prefix(batch)
    labels = batch["labels"]  # (B, T)
    targets = labels[:, 1:]  # (B, T-1): token t+1 is predicted at t
    keep = targets != IGNORE  # (B, T-1)
    n_tokens = int(keep.sum())
    # Only the hidden states that predict a labelled token need the vocabulary projection.
    positions = keep.any(dim=0).nonzero().squeeze(-1)  # (K,)
    kept_targets = targets[:, positions]  # (B, K)
    mask = kept_targets != IGNORE  # (B, K)
    inner = unwrapped(model)  # what the model is; the forward still runs through `model`
    shift = _virtual_tokens(inner)  # outputs of prompt-tuned models start with V of them
    packed = "position_ids" in batch
    if packed and (shift or _prefix_tuned(inner)):  # V virtual positions for every example
        row = virtual_token_row if shift else prefix_tuning_row
        base, inputs = row(inner, batch)
        with per_example_attention(base):
            return _loss_sum(base, inputs, positions + shift, kept_targets, mask), n_tokens
    loss = _loss_sum(model, model_inputs(batch), positions + shift, kept_targets, mask, inner)
    return loss, n_tokens


def mean_token_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mean of `token_loss_sum` over the batch's labelled tokens (0 when it has none)."""
    total, count = token_loss_sum(model, batch)
    return total / max(count, 1)


def _loss_sum(model, inputs, positions, kept_targets, mask, inner=None) -> torch.Tensor:
    """Summed cross-entropy of `kept_targets` (B, K) where `mask`, predicted from the model's
    outputs at sequence `positions` (K,); `inner`: the model under a DDP wrapper (its head)."""
    head = _plain_head(inner if inner is not None else model)
    if head is None:  # a head we cannot bypass: project every kept position, then score
        logits = _kept_logits(model, inputs, positions)  # (B, K, V)
        return F.cross_entropy(logits[mask].float(), kept_targets[mask], reduction="sum")
    hidden = _kept_hidden(model, head, inputs, positions)  # (B, K, d)
    return linear_cross_entropy(hidden[mask], head.weight, head.bias, kept_targets[mask])


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (multi-process training), whose
    attributes say what it is (its head, its virtual tokens); any other model as it is."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """sum_i CE(hidden_i @ weight.T + bias, targets_i) for hidden (N, d), weight (V, d), targets
    (N,), equal to F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="sum")
    but never holding more than one (chunk_rows, V) block of logits (computed in fp32)."""
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // weight.shape[0])
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias)
    )
    if not needs_grad:
        with torch.no_grad():
            return _chunked_loss(hidden, weight, bias, targets, rows)
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, rows)


def _chunked_loss(hidden, weight, bias, targets, rows: int) -> torch.Tensor:
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], rows):
        logits = F.linear(hidden[start : start + rows], weight, bias).float()  # (C, V)
        total += F.cross_entropy(logits, targets[start : start + rows], reduction="sum")
    return total


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and, chunk by chunk, its gradients (softmax - one-hot is
    d loss / d logits); backward only scales them. Nothing of size V is saved for backward
    but the weight's gradient (V, d), which the optimizer needs anyway."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, rows):
        device = hidden.device.type  # under autocast the logits are computed in its dtype
        low = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        with torch.autocast(device, enabled=False):
            dtype = low or hidden.dtype
            w = weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            want_h, want_w, want_b = ctx.needs_input_grad[:3]
            grad_h = torch.empty_like(hidden) if want_h else None  # (N, d)
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_w else None  # (V, d)
            grad_b = torch.zeros_like(bias, dtype=torch.float32) if want_b else None  # (V,)
            total = hidden.new_zeros((), dtype=torch.float32)
            for start in range(0, hidden.shape[0], rows):
                h = hidden[start : start + rows].to(dtype)  # (C, d)
                t = targets[start : start + rows]  # (C,)
                logits = F.linear(h, w, b).float()  # (C, V)
                logsumexp = torch.logsumexp(logits, dim=-1)  # (C,)
                total += (logsumexp - logits.gather(1, t[:, None]).squeeze(1)).sum()
                grad = logits.sub_(logsumexp[:, None]).exp_()  # softmax, in place: (C, V)
                grad[torch.arange(len(t), device=t.device), t] -= 1.0
                grad = grad.to(dtype)
                if want_h:
                    grad_h[start : start + rows] = grad @ w
                if want_w:
                    grad_w.addmm_(grad.t().float(), h.float())
                if want_b:
                    grad_b += grad.float().sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        scale = grad_output.float()
        return (
            (grad_h * scale.to(grad_h.dtype)) if grad_h is not None else None,
            (grad_w * scale).to(weight_dtype) if grad_w is not None else None,
            (grad_b * scale).to(bias_dtype) if grad_b is not None else None,
            None,
            None,
        )


def _kept_hidden(
    model: nn.Module, head: nn.Linear, inputs: dict, keep: torch.Tensor
) -> torch.Tensor:
    """Final hidden states (B, K, d) at sequence positions `keep` (K,), the head bypassed."""
    captured: list[torch.Tensor] = []

    def bypass(module, args):
        captured.append(args[0])  # (B, K, d), or (B, T, d) without logits_to_keep
        return (args[0][:, :0],)  # the head projects nothing

    handle = head.register_forward_pre_hook(bypass)
    try:
        if accepts_logits_to_keep(model):
            model(**inputs, logits_to_keep=keep, use_cache=False)
            return captured[-1]
        model(**inputs, use_cache=False)
        return captured[-1][:, keep]
    finally:
        handle.remove()


def _kept_logits(model: nn.Module, inputs: dict, keep: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, V) at sequence positions `keep` (K,)."""
    if accepts_logits_to_keep(model):
        return model(**inputs, logits_to_keep=keep, use_cache=False).logits
    return model(**inputs, use_cache=False).logits[:, keep]


def _plain_head(model: nn.Module) -> nn.Linear | None:
    """The output projection if the logits are exactly `head(hidden)`, else None (a head with
    an adapter on it, models that rescale or soft-cap their logits, or untested libraries:
    bypassing the head relies on the model calling it once, on its final hidden states)."""
    if not fast_paths_enabled():
        return None
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    config = getattr(model, "config", None)
    if type(head) is not nn.Linear or config is None:
        return None
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    return head


def _virtual_tokens(model: nn.Module) -> int:
    """V for a PEFT model that puts V virtual-token embeddings before the text (prompt tuning,
    p-tuning), so its logits are (B, V + T, vocab); 0 otherwise (prefix tuning's prefix lives
    in the KV cache and adds no logits)."""
    config = getattr(model, "active_peft_config", None)
    if not getattr(config, "is_prompt_learning", False) or config.peft_type == "PREFIX_TUNING":
        return 0
    return config.num_virtual_tokens


def _prefix_tuned(model: nn.Module) -> bool:
    config = getattr(model, "active_peft_config", None)
    return getattr(config, "peft_type", None) == "PREFIX_TUNING"


def labelled_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens whose loss is counted (token t+1 predicted at t), as `token_loss_sum` counts."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())
