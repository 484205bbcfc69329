"""BitFit beyond the method matrix (test_contract.py): how many biases train and how many were
added per architecture, the report written on save, and merging with the config flags that
declare added biases (or a refusal where the config cannot declare them)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.errors import MergeNotSupported
from tunelab.methods import METHODS
from tunelab.methods.base import count_parameters
from tunelab.methods.bitfit import BITFIT_REPORT, BiasedLinear
from tunelab.models.tiny import TINY_ARCHS

from .conftest import applied, logits, train

METHOD = METHODS["bitfit"]
# Per block, projection biases: q 64 + k 32 + v 32 + o 64 + gate 128 + up 128 + down 64 = 512
# (llama-like); bloom/gpt2: qkv 192 + out 64 + in 256 + out 64 = 576, plus 2 x 64 norm biases.
LLAMA_LIKE = ("llama", "qwen2", "gemma", "gemma3", "mistral")
TRAINABLE = dict.fromkeys(LLAMA_LIKE, 1024) | {"bloom": 1536, "gpt2": 1472}
ADDED_MODULES = dict.fromkeys(LLAMA_LIKE, 14) | {"qwen2": 8, "bloom": 0, "gpt2": 0}


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_biases_train_and_missing_ones_are_added(arch, tmp_path):
    model, cfg, _, _ = applied("bitfit", arch)
    assert count_parameters(model)[0] == TRAINABLE[arch]
    assert len(METHOD.added_biases(model)) == ADDED_MODULES[arch]
    METHOD.save(model, cfg, tmp_path)
    report = json.loads((tmp_path / BITFIT_REPORT).read_text())
    assert report["added_biases"] == ADDED_MODULES[arch]
    assert report["added_bias_modules"] == METHOD.added_biases(model)


@pytest.mark.parametrize(
    ("arch", "settings"),
    [
        ("qwen2", {"add_missing": False}),  # native q/k/v biases only
        ("gemma", {"targets": "attention"}),  # added biases declared by attention_bias
        ("gemma3", {"targets": "attention"}),
    ],
)
def test_merge_with_settings_the_config_can_declare(arch, settings, tmp_path):
    """The matrix refuses the default settings; these settings make qwen2 and gemmas mergeable."""
    model, cfg, batch, _ = applied("bitfit", arch, **settings)
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
    model, cfg, _, _ = applied("bitfit", "llama", targets="mlp")
    merged = METHOD.merge(model, cfg)
    assert merged.config.mlp_bias and not merged.config.attention_bias


@pytest.mark.parametrize("arch", ["qwen2", "gemma", "gemma3", "mistral"])
def test_merge_refuses_biases_the_config_cannot_declare(arch):  # mistral: none at all
    model, cfg, _, _ = applied("bitfit", arch)
    with pytest.raises(MergeNotSupported, match="cannot declare a bias"):
        METHOD.merge(model, cfg)
    assert len(METHOD.added_biases(model)) == ADDED_MODULES[arch]  # left untouched


def test_targets_choose_the_projections():
    model, _, _, _ = applied("bitfit", "llama", targets="attention")
    added = METHOD.added_biases(model)
    assert len(added) == 8 and all(".self_attn." in name for name in added)
