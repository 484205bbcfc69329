"""Importance-selected sparse fine-tuning beyond the method matrix (test_contract.py): the top
fraction of entries is chosen deterministically without touching the weights, only those entries
of the effective weights move, indices are saved compactly, a tied embedding and head share one
delta (also when merged), and the Fisher criterion and target presets select as documented."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tunelab.errors import ConfigError
from tunelab.methods import METHODS
from tunelab.methods.base import ADAPTER_WEIGHTS, MethodContext, count_parameters
from tunelab.methods.importance import ImportanceSettings, select_top, sparse_deltas
from tunelab.models.tiny import TINY_ARCHS, random_model

from .conftest import applied, logits, spread_model, train

METHOD = METHODS["importance"]
# Entries of the projection weights in the two blocks: llama-like q, o 64x64; k, v 32x64;
# gate, up, down 128x64. bloom/gpt2: qkv 192x64, out 64x64, in 256x64, out 64x256.
TARGET_ENTRIES = dict.fromkeys(("llama", "qwen2", "gemma", "gemma3", "mistral"), 73728)
TARGET_ENTRIES |= {"bloom": 98304, "gpt2": 98304}


def selected(arch: str, **settings):
    """(model with deltas, settings, batch, untouched base model of the same seed)."""
    model, cfg, batch, _ = applied("importance", arch, **settings)
    return model, cfg, batch, spread_model(arch)[0]


def effective_weights(model) -> dict[str, torch.Tensor]:
    """Standard weight name -> the weight the forward pass uses (base + delta)."""
    with torch.no_grad():
        return {
            f"{n}.weight": m.weight.clone() for n, m in model.named_modules() if n in _names(model)
        }


def _names(model) -> set[str]:
    return {name.removesuffix(".weight") for name in sparse_deltas(model)}


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_the_top_fraction_of_target_entries_trains(arch):
    model, _, _, _ = selected(arch)
    assert count_parameters(model)[0] == round(0.005 * TARGET_ENTRIES[arch])


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_calibration_changes_nothing_and_is_deterministic(arch):
    model, _, batch, base = selected(arch)
    assert torch.equal(logits(model, batch), logits(base, batch))
    assert all(param.grad is None for param in model.parameters())
    again, _, _, _ = selected(arch)
    first, second = sparse_deltas(model), sparse_deltas(again)
    assert first.keys() == second.keys()
    for name, delta in first.items():
        assert torch.equal(delta.importance_indices, second[name].importance_indices)


@pytest.mark.parametrize("arch", TINY_ARCHS)
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


def test_saved_indices_are_int32(tmp_path):
    model, cfg, _, _ = selected("llama")
    METHOD.save(model, cfg, tmp_path)
    saved = load_file(str(tmp_path / ADAPTER_WEIGHTS))
    assert {t.dtype for k, t in saved.items() if k.endswith("indices")} == {torch.int32}


def test_tied_embedding_and_head_share_one_delta_merged_once(tmp_path):
    model, cfg, batch, _ = selected("llama", embeddings=True, fraction=0.05)
    assert "model.embed_tokens.weight" in sparse_deltas(model)
    train(model, cfg, batch, steps=3)
    assert torch.equal(model.model.embed_tokens.weight, model.lm_head.weight)
    expected = logits(model, batch)
    merged = METHOD.merge(model, cfg)  # adding the delta twice would change the logits
    names = [name for name, _ in merged.named_parameters()]
    assert not any("importance" in name or "parametrizations" in name for name in names)
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, batch), expected, atol=1e-4, rtol=0)


def test_fisher_criterion_and_attention_targets():
    model, _, _, _ = selected("qwen2", criterion="fisher", targets="attention", fraction=0.01)
    assert all(".self_attn." in name for name in sparse_deltas(model))
    assert count_parameters(model)[0] == round(0.01 * 2 * (2 * 4096 + 2 * 2048))


def test_ties_go_to_the_earliest_entries():
    scores = {"a": torch.tensor([1.0, 3.0, 3.0]), "b": torch.tensor([[3.0, 0.0], [3.0, 5.0]])}
    chosen = select_top(scores, fraction=3 / 7)  # k = 3: the 5, then the first two 3s
    assert chosen["a"].tolist() == [1, 2] and chosen["b"].tolist() == [3]


@pytest.mark.parametrize("fraction", [1e-3, 0.05, 0.5, 1.0])
def test_selection_is_the_top_k_of_a_full_sort(fraction):
    """Against a stable descending sort of all scores together, ties included (scores are
    rounded so many entries tie)."""
    generator = torch.Generator().manual_seed(0)
    scores = {
        name: (torch.rand(shape, generator=generator) * 50).round() / 7
        for name, shape in [("a", (37, 11)), ("b", (5,)), ("c", (64, 3)), ("d", (1, 1))]
    }
    flat = torch.cat([score.reshape(-1) for score in scores.values()])
    k = max(1, round(fraction * flat.numel()))
    order = torch.sort(-flat, stable=True).indices[:k]  # earliest first among equals
    expected = torch.zeros_like(flat, dtype=torch.bool)
    expected[order] = True
    chosen = select_top(scores, fraction)
    got = torch.zeros_like(expected)
    offset = 0
    for name, score in scores.items():
        if name in chosen:
            got[offset + chosen[name]] = True
        offset += score.numel()
    assert torch.equal(got, expected)


def test_apply_without_calibration_data_is_an_error():
    model, _ = random_model("llama")
    with pytest.raises(ConfigError, match="calibration"):
        METHOD.apply(model, ImportanceSettings(), MethodContext())
