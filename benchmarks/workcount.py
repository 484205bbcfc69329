"""What a side's training really pushed through the model, counted while it trains, and the
FLOPs that follow from it (see throughput.py's docstring for how they become utilisations).

Two counts, taken with hooks for the span of `count_work(model)`:

- model tokens: positions that went through the decoder layers — a forward pre-hook on the
  input embedding adds the size of every `input_ids` it is given (padding included, so the
  padded reference sides pay for it; after shared-prefix compaction on tunelab's, so the
  prefix counts once per row), plus V per row for prompt tuning's V virtual tokens, which
  enter the layers without passing the embedding. Prefix tuning's virtual keys and values
  enter no layer and are not counted.
- head rows: hidden states that went through the vocabulary projection — a forward hook on
  the output head adds the rows of its input (every position for a model that computes full
  logits; none where a loss bypasses the head with an empty input), plus the rows handed to
  the chunked losses that project with the head's weight themselves: tunelab's
  `linear_cross_entropy` (the labelled positions) and, for the trl side, trl's fused LM head
  (`_ChunkedLogProbFunction`: every position on CPU, the labelled ones on Triton devices).

Recomputation under activation checkpointing is not counted (the embedding is not rerun).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from unittest import mock

import torch
from torch import nn


@dataclass
class WorkCount:
    model_tokens: int = 0
    head_rows: int = 0

    def figures(self) -> dict:
        return {"model_tokens": self.model_tokens, "head_rows": self.head_rows}


def virtual_tokens(model: nn.Module) -> int:
    """V for a PEFT model that puts V learned embeddings before every row (prompt tuning,
    p-tuning); 0 otherwise."""
    config = getattr(model, "active_peft_config", None)
    if not getattr(config, "is_prompt_learning", False) or config.peft_type == "PREFIX_TUNING":
        return 0
    return config.num_virtual_tokens


def chunked_losses() -> list[tuple[object, str]]:
    """(owner, attribute) of every callable that projects hidden rows (N, d), its first
    argument, through the head's weight without calling the head module."""
    import tunelab.training.loss as tunelab_loss

    found: list[tuple[object, str]] = [(tunelab_loss, "linear_cross_entropy")]
    try:
        from trl.trainer.utils import _ChunkedLogProbFunction
    except ImportError:  # trl absent, or a version without a fused head: nothing to count
        return found
    return [*found, (_ChunkedLogProbFunction, "apply")]


@contextmanager
def count_work(model: nn.Module) -> Iterator[WorkCount]:
    """Count model tokens and head rows (module docstring) while the block runs."""
    count, virtual = WorkCount(), virtual_tokens(model)

    def on_embedding(module, args) -> None:
        ids = args[0]  # (B, T)
        count.model_tokens += ids.numel() + ids.shape[0] * virtual

    def on_head(module, args, output) -> None:
        hidden = args[0]  # (B, T, d), or (B, 0, d) when tunelab bypasses the head
        count.head_rows += hidden.numel() // hidden.shape[-1]

    def counting(projection):
        def counted(hidden: torch.Tensor, *rest, **kwargs):
            count.head_rows += hidden.shape[0]  # (N, d)
            return projection(hidden, *rest, **kwargs)

        return counted

    handles = [
        model.get_input_embeddings().register_forward_pre_hook(on_embedding),
        model.get_output_embeddings().register_forward_hook(on_head),
    ]
    try:
        with ExitStack() as patches:
            for owner, name in chunked_losses():
                patches.enter_context(
                    mock.patch.object(owner, name, counting(getattr(owner, name)))
                )
            yield count
    finally:
        for handle in handles:
            handle.remove()


def matmul_params(model: nn.Module) -> dict[str, int]:
    """Weights of the linear layers of the body (decoder layers, adapters included) and of the
    output head, and the trainable ones among each."""
    head = model.get_output_embeddings()
    counts = {"body": 0, "body_trainable": 0, "head": 0, "head_trainable": 0}
    for module in model.modules():
        if not (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"):
            continue
        part = "head" if module is head else "body"
        counts[part] += module.weight.numel()
        counts[f"{part}_trainable"] += module.weight.numel() if module.weight.requires_grad else 0
    return counts


def flops(params: dict[str, int], work: dict) -> dict:
    """Credited FLOPs per real token (every position through body and head, as a plain
    implementation of the same model would) and the FLOPs the side really executed.

    A linear layer of N weights costs 2·N per row forward, 2·N backward for the gradient of its
    input, and 2·N more for the gradient of its weight if that trains."""

    def per_row(part: str) -> int:
        return 4 * params[part] + 2 * params[f"{part}_trainable"]

    return {
        "credited_flops_per_token": per_row("body") + per_row("head"),
        "executed_flops": work["model_tokens"] * per_row("body")
        + work["head_rows"] * per_row("head"),
    }
