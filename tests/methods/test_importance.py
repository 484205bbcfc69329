"""Importance-selected sparse fine-tuning on every tiny architecture: the top fraction of entries
is chosen deterministically without touching the weights, only those entries move, save -> load
rebuilds from indices alone, and merging adds the delta into a plain model."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tunelab.errors import ConfigError
from tunelab.loss import token_loss_sum
from tunelab.methods import METHODS
from tunelab.methods.base import ADAPTER_WEIGHTS, MethodContext, count_parameters
from tunelab.methods.importance import (
    ImportanceSettings,
    ImportanceSparse,
    select_top,
    sparse_deltas,
)
from tunelab.models.tiny import random_model

ARCHS = ("llama", "qwen2", "gemma", "bloom", "gpt2")
METHOD = ImportanceSparse()
# Entries of the projection weights in the two blocks: llama-like q, o 64x64; k, v 32x64;
# gate, up, down 128x64. bloom/gpt2: qkv 192x64, out 64x64, in 256x64, out 64x256.
TARGET_ENTRIES = {"llama": 73728, "qwen2": 73728, "gemma": 73728, "bloom": 98304, "gpt2": 98304}


def fixed_batch(tokenizer) -> dict[str, torch.Tensor]:
    """One row (1, T) of a short repeating text: easy to overfit."""
    ids = tokenizer(["abcabcabc abcabcabc abcabcabc"], return_tensors="pt")["input_ids"]
    return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


def selected(arch: str, **settings):
    """(model with deltas, settings, batch, untouched base model of the same seed)."""
    model, tokenizer = random_model(arch)
    base, _ = random_model(arch)
    model.eval()  # no dropout (gpt2): outputs are deterministic
    batch = fixed_batch(tokenizer)
    cfg = ImportanceSettings(**settings)
    context = MethodContext(calibration_batches=lambda: [batch] * 2)
    return METHOD.apply(model, cfg, context), cfg, batch, base.eval()


def train(model, cfg, batch, steps: int, lr: float = 1e-2) -> list[float]:
    """The loop's contract in miniature: AdamW over param_groups, on_step before each step."""
    optimizer = torch.optim.AdamW(METHOD.param_groups(model, cfg, lr, 0.0))
    losses = []
    for step in range(steps):
        METHOD.on_step(model, cfg, step, steps)
        loss_sum, n_tokens = token_loss_sum(model, batch)
        (loss_sum / n_tokens).backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss_sum.item() / n_tokens)
    return losses


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def effective_weights(model) -> dict[str, torch.Tensor]:
    """Standard weight name -> the weight the forward pass uses (base + delta)."""
    with torch.no_grad():
        return {
            f"{n}.weight": m.weight.clone() for n, m in model.named_modules() if n in _names(model)
        }


def _names(model) -> set[str]:
    return {name.removesuffix(".weight") for name in sparse_deltas(model)}


def test_registered():
    assert isinstance(METHODS["importance"], ImportanceSparse)


@pytest.mark.parametrize("arch", ARCHS)
def test_only_the_top_fraction_trains(arch):
    model, _, _, _ = selected(arch)
    names = METHOD.trainable_names(model)
    assert names and all(name.endswith("importance_delta") for name in names)
    assert count_parameters(model)[0] == round(0.005 * TARGET_ENTRIES[arch])


@pytest.mark.parametrize("arch", ARCHS)
def test_calibration_changes_nothing_and_is_deterministic(arch):
    model, _, batch, base = selected(arch)
    assert torch.equal(logits(model, batch), logits(base, batch))
    assert all(param.grad is None for param in model.parameters())
    again, _, _, _ = selected(arch)
    first, second = sparse_deltas(model), sparse_deltas(again)
    assert first.keys() == second.keys()
    for name, delta in first.items():
        assert torch.equal(delta.importance_indices, second[name].importance_indices)


@pytest.mark.parametrize("arch", ARCHS)
def test_steps_move_selected_entries_only(arch):
    model, cfg, batch, base = selected(arch)
    base_weights = dict(base.named_parameters())
    train(model, cfg, batch, steps=3)
    for name, weight in effective_weights(model).items():
        indices = sparse_deltas(model)[name].importance_indices
        moved = (weight != base_weights[name]).reshape(-1)
        assert moved[indices].all(), name
        moved[indices] = False
        assert not moved.any(), name  # every unselected entry bit-identical
    originals = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    for name, param in originals.items():
        standard = name.replace(".parametrizations.weight.original", ".weight")
        assert torch.equal(param, base_weights[standard]), name


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_falls_on_tiny_overfit_set(arch):
    model, cfg, batch, _ = selected(arch)
    losses = train(model, cfg, batch, steps=30)
    assert losses[-1] < 0.95 * losses[0]  # the frozen, tiny-norm tied head caps the drop


@pytest.mark.parametrize("arch", ARCHS)
def test_save_then_load_rebuilds_without_calibration(arch, tmp_path):
    model, cfg, batch, _ = selected(arch)
    train(model, cfg, batch, steps=3)
    METHOD.save(model, cfg, tmp_path)
    saved = load_file(str(tmp_path / ADAPTER_WEIGHTS))
    assert {t.dtype for k, t in saved.items() if k.endswith("indices")} == {torch.int32}
    fresh, _ = random_model(arch)
    loaded = METHOD.load(fresh.eval(), cfg, tmp_path)
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_with_kv_cache_matches_without(arch):
    model, cfg, batch, _ = selected(arch)
    train(model, cfg, batch, steps=3)
    prompt = batch["input_ids"][:, :6]
    cached = model.generate(prompt, max_new_tokens=5, do_sample=False)
    uncached = model.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize(
    ("arch", "settings"), [(a, {}) for a in ARCHS] + [("llama", {"embeddings": True})]
)
def test_merge_gives_a_plain_model_with_the_same_logits(arch, settings, tmp_path):
    model, cfg, batch, _ = selected(arch, **settings)
    train(model, cfg, batch, steps=3)
    expected = logits(model, batch)
    merged = METHOD.merge(model, cfg)
    names = [name for name, _ in merged.named_parameters()]
    assert not any("importance" in name or "parametrizations" in name for name in names)
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(merged)
    torch.testing.assert_close(logits(reloaded, batch), expected, atol=1e-4, rtol=0)


def test_tied_embedding_and_head_share_one_delta():
    model, cfg, batch, _ = selected("llama", embeddings=True, fraction=0.05)
    assert "model.embed_tokens.weight" in sparse_deltas(model)
    train(model, cfg, batch, steps=3)
    assert torch.equal(model.model.embed_tokens.weight, model.lm_head.weight)


def test_fisher_criterion_and_attention_targets():
    model, _, _, _ = selected("qwen2", criterion="fisher", targets="attention", fraction=0.01)
    assert all(".self_attn." in name for name in sparse_deltas(model))
    assert count_parameters(model)[0] == round(0.01 * 2 * (2 * 4096 + 2 * 2048))


def test_ties_go_to_the_earliest_entries():
    scores = {"a": torch.tensor([1.0, 3.0, 3.0]), "b": torch.tensor([[3.0, 0.0], [3.0, 5.0]])}
    chosen = select_top(scores, fraction=3 / 7)  # k = 3: the 5, then the first two 3s
    assert chosen["a"].tolist() == [1, 2] and chosen["b"].tolist() == [3]


def test_apply_without_calibration_data_is_an_error():
    model, _ = random_model("llama")
    with pytest.raises(ConfigError, match="calibration"):
        METHOD.apply(model, ImportanceSettings(), MethodContext())
