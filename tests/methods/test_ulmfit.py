"""ULMFiT on every tiny architecture: layer groups cover each parameter once, discriminative
learning rates lr / 2.6^depth, gradual unfreezing from the top with frozen groups bit-identical,
loss falls, save -> load, generation, and merge as a no-op."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.loss import token_loss_sum
from tunelab.methods import METHODS
from tunelab.methods.base import MethodContext
from tunelab.methods.ulmfit import Ulmfit, UlmfitSettings, layer_groups
from tunelab.models.tiny import LAYERS, random_model

ARCHS = ("llama", "qwen2", "gemma", "bloom", "gpt2")
METHOD = Ulmfit()
# Bottom group: what is neither in a block nor tied to the head (gpt2 positions, bloom's
# embedding norm); llama-like models tie everything else into the top group.
GROUPS = {"llama": LAYERS + 1, "qwen2": LAYERS + 1, "gemma": LAYERS + 1, "bloom": LAYERS + 2}
GROUPS["gpt2"] = LAYERS + 2


def fixed_batch(tokenizer) -> dict[str, torch.Tensor]:
    """One row (1, T) of a short repeating text: easy to overfit."""
    ids = tokenizer(["abcabcabc abcabcabc abcabcabc"], return_tensors="pt")["input_ids"]
    return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


def prepared(arch: str, **settings):
    model, tokenizer = random_model(arch)
    model.eval()  # no dropout (gpt2): outputs are deterministic
    cfg = UlmfitSettings(**settings)
    return METHOD.apply(model, cfg, MethodContext()), cfg, fixed_batch(tokenizer)


def train(model, cfg, batch, steps: int, lr: float = 1e-3, on_each_step=None) -> list[float]:
    """The loop's contract in miniature: AdamW over param_groups, on_step before each step."""
    optimizer = torch.optim.AdamW(METHOD.param_groups(model, cfg, lr, 0.01))
    losses = []
    for step in range(steps):
        METHOD.on_step(model, cfg, step, steps)
        loss_sum, n_tokens = token_loss_sum(model, batch)
        (loss_sum / n_tokens).backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss_sum.item() / n_tokens)
        if on_each_step:
            on_each_step(step)
    return losses


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_registered():
    assert isinstance(METHODS["ulmfit"], Ulmfit)


@pytest.mark.parametrize("arch", ARCHS)
def test_groups_hold_every_parameter_once_top_last(arch):
    model, _, _ = prepared(arch)
    groups = layer_groups(model)
    assert len(groups) == GROUPS[arch]
    ids = [id(param) for group in groups for _, param in group]
    assert len(ids) == len(set(ids)) == len({id(p) for p in model.parameters()})
    top_names = {name for name, _ in groups[-1]}
    assert any("norm" in name or "ln_f" in name for name in top_names)
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert any(param is model.get_input_embeddings().weight for _, param in groups[-1])
    assert all(".0." in name for name, _ in groups[-LAYERS - 1])  # lowest block


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_discriminative_learning_rates(arch):
    model, cfg, _ = prepared(arch)
    groups = layer_groups(model)
    optimizer_groups = METHOD.param_groups(model, cfg, lr=1e-3, weight_decay=0.1)
    lr_of = {id(p): group["lr"] for group in optimizer_groups for p in group["params"]}
    assert len(lr_of) == sum(len(group) for group in groups)  # frozen ones included
    for index, group in enumerate(groups):
        depth = len(groups) - 1 - index
        for _, param in group:
            assert lr_of[id(param)] == pytest.approx(1e-3 / 2.6**depth)
    flat = UlmfitSettings(discriminative=False)
    assert {group["lr"] for group in METHOD.param_groups(model, flat, 1e-3, 0.0)} == {1e-3}


def test_groups_unfreeze_top_first_in_order():
    model, cfg, _ = prepared("gpt2")
    groups = layer_groups(model)  # 4 groups: 12 steps -> one more group every 3 steps
    for step, expected in [(0, 1), (2, 1), (3, 2), (6, 3), (9, 4), (11, 4)]:
        METHOD.on_step(model, cfg, step, 12)
        trainable = [all(p.requires_grad for _, p in g) for g in groups]
        frozen = [not any(p.requires_grad for _, p in g) for g in groups]
        assert trainable == [index >= len(groups) - expected for index in range(len(groups))]
        assert all(t or f for t, f in zip(trainable, frozen, strict=True))


def test_unfreezing_can_be_paced_or_switched_off():
    model, _, _ = prepared("llama")
    paced, off = UlmfitSettings(unfreeze_every=1), UlmfitSettings(gradual_unfreezing=False)
    METHOD.on_step(model, paced, 1, 100)
    assert [all(p.requires_grad for _, p in g) for g in layer_groups(model)] == [False, True, True]
    METHOD.on_step(model, off, 0, 100)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_frozen_groups_stay_bit_identical_until_unfrozen(arch):
    model, cfg, batch = prepared(arch)
    groups = layer_groups(model)
    steps = 3 * len(groups)  # each group waits 3 steps per group above it
    initial = [[p.detach().clone() for _, p in group] for group in groups]

    def check(step: int) -> None:
        for index, group in enumerate(groups):
            unfreezes_at = 3 * (len(groups) - 1 - index)
            same = all(torch.equal(p, q) for (_, p), q in zip(group, initial[index], strict=True))
            assert same == (step < unfreezes_at), (step, index)

    train(model, cfg, batch, steps, on_each_step=check)


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_falls_on_tiny_overfit_set(arch):
    model, cfg, batch = prepared(arch)
    losses = train(model, cfg, batch, steps=30, lr=3e-3)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_save_then_load_and_merge_reproduce_logits(arch, tmp_path):
    model, cfg, batch = prepared(arch)
    train(model, cfg, batch, steps=3)
    METHOD.save(model, cfg, tmp_path)
    fresh, _ = random_model(arch)
    loaded = METHOD.load(fresh, cfg, tmp_path).eval()
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), atol=1e-5, rtol=0)
    merged = METHOD.merge(model, cfg)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(reloaded, batch), logits(model, batch), atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_with_kv_cache_matches_without(arch):
    model, cfg, batch = prepared(arch)
    train(model, cfg, batch, steps=3)
    prompt = batch["input_ids"][:, :6]
    cached = model.generate(prompt, max_new_tokens=5, do_sample=False)
    uncached = model.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
