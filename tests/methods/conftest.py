"""Shared pieces of the method tests: tiny models whose weights are spread out, a small padded
overfit batch, each method applied with small settings, the training loop's contract in
miniature, logits, and greedy decoding without a cache (the reference for cached generation).

Test modules import these with `from .conftest import ...` (pytest runs in importlib mode).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from tunelab.methods import METHODS, MethodContext, MethodSettings
from tunelab.models.tiny import random_model
from tunelab.training.loss import token_loss_sum

VIRTUAL = 4  # virtual tokens of the prompt-learning methods: few, so the tiny models stay fast
SMALL_SETTINGS = {
    "prefix": {"num_virtual_tokens": VIRTUAL},
    "prompt": {"num_virtual_tokens": VIRTUAL},
    "ptuning": {"num_virtual_tokens": VIRTUAL, "encoder_hidden_size": 16},
}
TEXTS = ["the cat sat on the mat", "reverse: abc -> cba", "hello world"]
PROMPTS = ["hello world, a longer prompt", "hi", "abc def", "x!"]  # lengths differ: left padding
Batch = dict[str, torch.Tensor]
POST_NORMS = ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")


class Applied(NamedTuple):
    model: nn.Module
    cfg: MethodSettings
    batch: Batch
    tokenizer: object


def spread_model(arch: str, seed: int = 0):
    """(model, tokenizer): the tiny random `arch` in eval mode (no dropout) with its matrices
    redrawn with std 0.3, so outputs depend on every activation (at the default init they are
    near uniform), training moves the loss quickly and greedy continuations vary from token to
    token. The same for the same seed.

    Gemma 3 is drawn at the scales of the trained 270M instead. Its token embedding is scaled
    by sqrt(hidden): drawn with std 1/sqrt(hidden), its rows enter with RMS 1 (as the 270M's).
    Each sublayer ends in a norm that scales by 1 + w, w starting at 0: these w get std 3 (the
    270M's reach the hundreds). At the default init the normalised sublayer outputs are too
    small beside the scaled embedding, and the tied head maps it back to the same token:
    greedy output repeats the last prompt token whatever a method trains."""
    model, tokenizer = random_model(arch, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1:
                scaled = arch == "gemma3" and name.endswith("embed_tokens.weight")
                std = parameter.shape[1] ** -0.5 if scaled else 0.3
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
            elif arch == "gemma3" and name.endswith(POST_NORMS):  # 1 + w after each sublayer
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 3.0)
    return model.eval(), tokenizer


def overfit_batch(tokenizer) -> Batch:
    """input_ids, attention_mask, labels (B, T) of TEXTS, right-padded as the trainer pads."""
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(row)
        attention_mask[index, : len(row)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def settings(name: str, **extra) -> MethodSettings:
    """The method's config with the small test settings, then `extra` on top."""
    return METHODS[name].Config(name=name, **(SMALL_SETTINGS.get(name, {}) | extra))


def mean_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    loss_sum, n_tokens = token_loss_sum(model, batch)
    return loss_sum / n_tokens


def context(batch: Batch, tokenizer) -> MethodContext:
    """What the run gives a method: calibration batches (importance) and the tokenizer."""
    return MethodContext(
        calibration_batches=lambda: [batch] * 2, loss_fn=mean_loss, tokenizer=tokenizer
    )


def applied(name: str, arch: str, **extra) -> Applied:
    """The method `name` applied to spread_model(arch), with its random initial values (LoRA's
    A, adapters' down-projections, sampled prompts) drawn from seed 0."""
    base, tokenizer = spread_model(arch)
    batch = overfit_batch(tokenizer)
    cfg = settings(name, **extra)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = METHODS[name].apply(base, cfg, context(batch, tokenizer))
    return Applied(model.eval(), cfg, batch, tokenizer)


def train(
    model: nn.Module,
    cfg: MethodSettings,
    batch: Batch,
    steps: int,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    on_each_step=None,
) -> list[float]:
    """The loop's contract in miniature: AdamW over the method's param_groups, its on_step
    before each step. Returns the mean token loss at each step (before that step's update)."""
    method = METHODS[cfg.name]
    optimizer = torch.optim.AdamW(method.param_groups(model, cfg, lr, weight_decay))
    losses = []
    for step in range(steps):
        method.on_step(model, cfg, step, steps)
        loss = mean_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if on_each_step is not None:
            on_each_step(step)
    return losses


def logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """(B, T, vocab), or (B, V + T, vocab) for a model with V virtual tokens in front."""
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def greedy_without_cache(model: nn.Module, tokenizer, prompt: str, new_tokens: int) -> str:
    """Reference decoding: one full forward pass per new token, no cache, argmax, stop at EOS."""
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]  # (1, T)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(new_tokens):
            output = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
            token = int(output.logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True).strip()
