"""Bottleneck adapters (Houlsby) on every tiny architecture: only adapters train, identity at
init, frozen base bit-identical, loss falls, save -> load, generation with the KV cache."""

from __future__ import annotations

import pytest
import torch

from tunelab.errors import MergeNotSupported
from tunelab.loss import token_loss_sum
from tunelab.methods import METHODS
from tunelab.methods.adapter import AdaptedSublayer, AdapterSettings, BottleneckAdapter
from tunelab.methods.base import MethodContext, count_parameters
from tunelab.models.arch import decoder_layers
from tunelab.models.tiny import HIDDEN, LAYERS, random_model

ARCHS = ("llama", "qwen2", "gemma", "bloom", "gpt2")
METHOD = BottleneckAdapter()
ADAPTER_PARAMETERS = 2 * HIDDEN * 64 + HIDDEN + 64  # down + up, weights and biases, size 64


def fixed_batch(tokenizer) -> dict[str, torch.Tensor]:
    """One row (1, T) of a short repeating text: easy to overfit."""
    ids = tokenizer(["abcabcabc abcabcabc abcabcabc"], return_tensors="pt")["input_ids"]
    return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


def adapted(arch: str, **settings):
    model, tokenizer = random_model(arch)
    model.eval()  # no dropout (gpt2): outputs are deterministic
    cfg = AdapterSettings(**settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the down-projections' random init
        model = METHOD.apply(model, cfg, MethodContext())
    return model, cfg, fixed_batch(tokenizer)


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
    assert isinstance(METHODS["adapter"], BottleneckAdapter)


@pytest.mark.parametrize("arch", ARCHS)
def test_only_adapters_train(arch):
    model, _, _ = adapted(arch)
    names = METHOD.trainable_names(model)
    assert names and all("adapter_" in name for name in names)
    assert count_parameters(model)[0] == LAYERS * 2 * ADAPTER_PARAMETERS


@pytest.mark.parametrize("arch", ARCHS)
def test_identity_at_init(arch):
    base, _ = random_model(arch)
    model, _, batch = adapted(arch)
    assert torch.equal(logits(model, batch), logits(base.eval(), batch))


@pytest.mark.parametrize("arch", ARCHS)
def test_steps_change_adapters_only(arch):
    model, cfg, batch = adapted(arch)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    train(model, cfg, batch, steps=3)
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == param.requires_grad, name


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_falls_on_tiny_overfit_set(arch):
    model, cfg, batch = adapted(arch)
    losses = train(model, cfg, batch, steps=30)
    assert losses[-1] < 0.95 * losses[0]  # the frozen, tiny-norm tied head caps the drop


@pytest.mark.parametrize("arch", ARCHS)
def test_save_then_load_reproduces_logits(arch, tmp_path):
    model, cfg, batch = adapted(arch)
    train(model, cfg, batch, steps=3)
    METHOD.save(model, cfg, tmp_path)
    fresh, _ = random_model(arch)
    loaded = METHOD.load(fresh.eval(), cfg, tmp_path)
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_with_kv_cache_matches_without(arch):
    model, cfg, batch = adapted(arch)
    train(model, cfg, batch, steps=3)
    prompt = batch["input_ids"][:, :6]
    cached = model.generate(prompt, max_new_tokens=5, do_sample=False)
    uncached = model.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False)
    assert cached.shape == (1, 11)
    assert torch.equal(cached, uncached)


def test_merge_is_refused_with_a_reason():
    model, cfg, _ = adapted("llama")
    with pytest.raises(MergeNotSupported, match="nonlinearity"):
        METHOD.merge(model, cfg)


def test_mlp_placement_and_layer_norms():
    model, _, _ = adapted("llama", placement="mlp", train_layer_norms=True, size=8)
    blocks = decoder_layers(model)
    assert all(isinstance(block.mlp, AdaptedSublayer) for block in blocks)
    assert not any(isinstance(block.self_attn, AdaptedSublayer) for block in blocks)
    norms = LAYERS * 2 * HIDDEN + HIDDEN  # two RMSNorms per block and the final one
    assert count_parameters(model)[0] == LAYERS * (2 * HIDDEN * 8 + HIDDEN + 8) + norms


def test_bloom_adapter_sees_the_sublayer_output_not_the_residual():
    """BLOOM's MLP adds the residual itself; the adapter must act before that addition."""
    model, _, _ = adapted("bloom", nonlinearity="relu")
    wrapper = decoder_layers(model)[0].mlp
    torch.nn.init.normal_(wrapper.adapter.adapter_up.weight)  # a non-identity adapter
    hidden, residual = torch.randn(2, 1, 3, HIDDEN).unbind(0)
    with torch.no_grad():
        output = wrapper.base_layer(hidden, torch.zeros_like(residual))
        expected = wrapper.adapter(output) + residual
        torch.testing.assert_close(wrapper(hidden, residual), expected)
        torch.testing.assert_close(wrapper(hidden, residual=residual), expected)
