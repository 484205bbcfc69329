"""BitFit on every tiny architecture: only biases train (zero ones added where missing), exact
at init, frozen weights bit-identical, loss falls, save -> load, generation, and merging into a
plain transformers model where the config can declare the added biases."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.errors import MergeNotSupported
from tunelab.loss import token_loss_sum
from tunelab.methods import METHODS
from tunelab.methods.base import MethodContext, count_parameters
from tunelab.methods.bitfit import BITFIT_REPORT, BiasedLinear, BitFit, BitFitSettings
from tunelab.models.tiny import random_model

ARCHS = ("llama", "qwen2", "gemma", "bloom", "gpt2")
METHOD = BitFit()
# Per block, projection biases: q 64 + k 32 + v 32 + o 64 + gate 128 + up 128 + down 64 = 512
# (llama-like); bloom/gpt2: qkv 192 + out 64 + in 256 + out 64 = 576, plus 2 x 64 norm biases.
TRAINABLE = {"llama": 1024, "qwen2": 1024, "gemma": 1024, "bloom": 1536, "gpt2": 1472}
ADDED_MODULES = {"llama": 14, "qwen2": 8, "gemma": 14, "bloom": 0, "gpt2": 0}


def fixed_batch(tokenizer) -> dict[str, torch.Tensor]:
    """One row (1, T) of a short repeating text: easy to overfit."""
    ids = tokenizer(["abcabcabc abcabcabc abcabcabc"], return_tensors="pt")["input_ids"]
    return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


def biased(arch: str, **settings):
    model, tokenizer = random_model(arch)
    model.eval()  # no dropout (gpt2): outputs are deterministic
    cfg = BitFitSettings(**settings)
    return METHOD.apply(model, cfg, MethodContext()), cfg, fixed_batch(tokenizer)


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


def test_registered():
    assert isinstance(METHODS["bitfit"], BitFit)


@pytest.mark.parametrize("arch", ARCHS)
def test_only_biases_train(arch):
    model, _, _ = biased(arch)
    names = METHOD.trainable_names(model)
    assert all(name.endswith((".bias", ".bitfit_bias")) for name in names)
    assert count_parameters(model)[0] == TRAINABLE[arch]
    assert len(METHOD.added_biases(model)) == ADDED_MODULES[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_at_init(arch):
    base, _ = random_model(arch)
    model, _, batch = biased(arch)
    assert torch.equal(logits(model, batch), logits(base.eval(), batch))


@pytest.mark.parametrize("arch", ARCHS)
def test_steps_change_biases_only(arch):
    model, cfg, batch = biased(arch)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    train(model, cfg, batch, steps=3)
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == param.requires_grad, name


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_falls_on_tiny_overfit_set(arch):
    model, cfg, batch = biased(arch)
    losses = train(model, cfg, batch, steps=30)
    assert losses[-1] < 0.95 * losses[0]  # the frozen, tiny-norm tied head caps the drop


@pytest.mark.parametrize("arch", ARCHS)
def test_save_then_load_reproduces_logits(arch, tmp_path):
    model, cfg, batch = biased(arch)
    train(model, cfg, batch, steps=3)
    METHOD.save(model, cfg, tmp_path)
    fresh, _ = random_model(arch)
    loaded = METHOD.load(fresh.eval(), cfg, tmp_path)
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), atol=1e-5, rtol=0)
    report = json.loads((tmp_path / BITFIT_REPORT).read_text())
    assert report["added_biases"] == ADDED_MODULES[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_with_kv_cache_matches_without(arch):
    model, cfg, batch = biased(arch)
    train(model, cfg, batch, steps=3)
    prompt = batch["input_ids"][:, :6]
    cached = model.generate(prompt, max_new_tokens=5, do_sample=False)
    uncached = model.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize(
    ("arch", "settings"),
    [
        ("llama", {}),  # added biases: config gains attention_bias and mlp_bias
        ("bloom", {}),  # native biases only
        ("gpt2", {}),
        ("qwen2", {"add_missing": False}),  # native q/k/v biases only
        ("gemma", {"targets": "attention"}),  # added biases declared by attention_bias
    ],
)
def test_merge_gives_a_plain_model_with_the_same_logits(arch, settings, tmp_path):
    model, cfg, batch = biased(arch, **settings)
    train(model, cfg, batch, steps=3)
    expected = logits(model, batch)
    merged = METHOD.merge(model, cfg)
    assert not any("bitfit" in name for name, _ in merged.named_parameters())
    assert not any(isinstance(module, BiasedLinear) for module in merged.modules())
    merged.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(merged)
    torch.testing.assert_close(logits(reloaded, batch), expected, atol=1e-4, rtol=0)


def test_merge_declares_the_added_biases_in_the_config():
    model, cfg, _ = biased("llama", targets="mlp")
    merged = METHOD.merge(model, cfg)
    assert merged.config.mlp_bias and not merged.config.attention_bias


@pytest.mark.parametrize("arch", ["qwen2", "gemma"])
def test_merge_refuses_biases_the_config_cannot_declare(arch):
    model, cfg, _ = biased(arch)
    with pytest.raises(MergeNotSupported, match="cannot declare a bias"):
        METHOD.merge(model, cfg)
    assert len(METHOD.added_biases(model)) == ADDED_MODULES[arch]  # left untouched


def test_targets_choose_the_projections():
    model, _, _ = biased("llama", targets="attention")
    added = METHOD.added_biases(model)
    assert len(added) == 8 and all(".self_attn." in name for name in added)
