"""Vocabulary extension, the model side: embedding rows for the added tokens.

- `add_rows`: resize the embeddings and set each new input row (and output row, where the head
  is untied) to the mean of the rows of the pieces the ORIGINAL tokenizer splits its text into;
  never random, so the model starts close to what it computed before (Gee et al. 2022, "Fast
  Vocabulary Transfer"; the usual mean-of-sub-tokens initialisation).
- `RowTrainer`: train only the new rows beside any method. The embedding (and untied head)
  weight becomes trainable and a gradient hook zeroes every old row's gradient; its optimizer
  group has no weight decay, so AdamW leaves old rows bit-identical (zero gradient -> zero
  moments -> zero update). Where the method already trains the whole weight (full fine-tuning,
  ULMFiT's last stage) nothing is masked. One mechanism for PEFT and our own methods alike: PEFT's
  `trainable_token_indices` exists for LoRA only, and its wrapper is bypassed by the chunked loss,
  which reads the head's weight directly.
- `rows_state` / `load_rows`: the new rows as tensors (`input`, `output`: (N, d); `ids`: (N,)),
  the file a run's adapter carries so that `load_run` rebuilds the model on a fresh base.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

INPUT, OUTPUT, IDS = "input", "output", "ids"


def tied(model: nn.Module) -> bool:
    output = model.get_output_embeddings()
    return output is None or output.weight is model.get_input_embeddings().weight


def add_rows(model: nn.Module, new_ids: Sequence[int], pieces: Sequence[Sequence[int]]) -> None:
    """Grow the embeddings to hold `new_ids` and initialise row new_ids[i] as the mean of the rows
    `pieces[i]` (old ids), input and (untied) output alike."""
    if not new_ids:
        return
    rows = max(model.get_input_embeddings().weight.shape[0], max(new_ids) + 1)
    model.resize_token_embeddings(rows, mean_resizing=False)
    weights = [model.get_input_embeddings().weight]
    if not tied(model):
        weights.append(model.get_output_embeddings().weight)
    with torch.no_grad():
        for weight in weights:  # (V, d)
            for new_id, old_ids in zip(new_ids, pieces, strict=True):
                source = weight[torch.tensor(list(old_ids))].float()  # (k, d)
                weight[new_id] = source.mean(dim=0).to(weight.dtype)


def rows_state(model: nn.Module, new_ids: Sequence[int]) -> dict[str, torch.Tensor]:
    """The new rows (input, and output where untied) and their ids, detached copies."""
    index = torch.tensor(list(new_ids), dtype=torch.long)
    state = {IDS: index, INPUT: _take(model.get_input_embeddings().weight, index)}
    if not tied(model):
        state[OUTPUT] = _take(model.get_output_embeddings().weight, index)
    return state


def _take(weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return weight.detach()[index.to(weight.device)].cpu().contiguous().clone()


def load_rows(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Resize `model` for the saved ids and copy the saved rows in."""
    index = state[IDS].long()
    rows = max(model.get_input_embeddings().weight.shape[0], int(index.max()) + 1)
    model.resize_token_embeddings(rows, mean_resizing=False)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[index.to(weight.device)] = state[INPUT].to(weight)
        if OUTPUT in state and not tied(model):
            weight = model.get_output_embeddings().weight
            weight[index.to(weight.device)] = state[OUTPUT].to(weight)


class RowTrainer:
    """Makes only the new rows of the embedding (and untied head) train; see the module doc."""

    def __init__(self, new_ids: Sequence[int]) -> None:
        self.new_ids = list(new_ids)
        self.masked: list[nn.Parameter] = []
        self._hooks: list = []

    def attach(self, model: nn.Module) -> None:
        """After the method is applied: enable the rows' weights and mask old rows' gradients."""
        for weight in _row_weights(model):
            if weight.requires_grad:  # the method trains the whole weight already
                continue
            weight.requires_grad_(True)
            mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
            mask[self.new_ids] = 1.0  # (V, 1): 1 on new rows
            self._hooks.append(weight.register_hook(lambda grad, m=mask: grad * m.to(grad)))
            self.masked.append(weight)

    def param_groups(self, groups: list[dict], lr: float) -> list[dict]:
        """The method's groups without the masked weights, plus one group of them without
        weight decay (decay would shrink the frozen old rows)."""
        ids = {id(p) for p in self.masked}
        kept = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in groups]
        kept = [g for g in kept if g["params"]]
        return kept + (
            [{"params": self.masked, "lr": lr, "weight_decay": 0.0}] if self.masked else []
        )

    def frozen_elements(self) -> int:
        """Elements of the masked weights that never train (subtracted from trainable counts)."""
        return sum(p.numel() - len(self.new_ids) * p.shape[1] for p in self.masked)

    def detach(self) -> None:
        """After training: remove the hooks and freeze the weights again, so a method's `save`
        of its trainable tensors does not take the whole embedding (the rows go in their own
        file)."""
        for hook in self._hooks:
            hook.remove()
        for weight in self.masked:
            weight.requires_grad_(False)
        self._hooks, self.masked = [], []


def _row_weights(model: nn.Module) -> list[nn.Parameter]:
    weights = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not weights[0]:
        weights.append(output.weight)
    return weights
