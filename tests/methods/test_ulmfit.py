"""ULMFiT beyond the method matrix (test_contract.py): layer groups cover each parameter once,
discriminative learning rates lr / 2.6^depth, and gradual unfreezing from the top, each group
bit-identical until its turn."""

from __future__ import annotations

import pytest
import torch

from tunelab.methods import METHODS
from tunelab.methods.ulmfit import UlmfitSettings, layer_groups
from tunelab.models.tiny import LAYERS, TINY_ARCHS

from .conftest import applied, train

METHOD = METHODS["ulmfit"]
# Bottom group: what is neither in a block nor tied to the head (gpt2 positions, bloom's
# embedding norm); llama-like models tie everything else into the top group.
GROUPS = dict.fromkeys(("llama", "qwen2", "gemma", "gemma3", "mistral"), LAYERS + 1)
GROUPS |= {"bloom": LAYERS + 2, "gpt2": LAYERS + 2}


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_groups_hold_every_parameter_once_top_last(arch):
    model, _, _, _ = applied("ulmfit", arch)
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
    model, cfg, _, _ = applied("ulmfit", arch)
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
    model, cfg, _, _ = applied("ulmfit", "gpt2")
    groups = layer_groups(model)  # 4 groups: 12 steps -> one more group every 3 steps
    for step, expected in [(0, 1), (2, 1), (3, 2), (6, 3), (9, 4), (11, 4)]:
        METHOD.on_step(model, cfg, step, 12)
        trainable = [all(p.requires_grad for _, p in g) for g in groups]
        frozen = [not any(p.requires_grad for _, p in g) for g in groups]
        assert trainable == [index >= len(groups) - expected for index in range(len(groups))]
        assert all(t or f for t, f in zip(trainable, frozen, strict=True))


def test_unfreezing_can_be_paced_or_switched_off():
    model, _, _, _ = applied("ulmfit", "llama")
    paced, off = UlmfitSettings(unfreeze_every=1), UlmfitSettings(gradual_unfreezing=False)
    METHOD.on_step(model, paced, 1, 100)
    assert [all(p.requires_grad for _, p in g) for g in layer_groups(model)] == [False, True, True]
    METHOD.on_step(model, off, 0, 100)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_frozen_groups_stay_bit_identical_until_unfrozen(arch):
    model, cfg, batch, _ = applied("ulmfit", arch)
    groups = layer_groups(model)
    steps = 3 * len(groups)  # each group waits 3 steps per group above it
    initial = [[p.detach().clone() for _, p in group] for group in groups]

    def check(step: int) -> None:
        for index, group in enumerate(groups):
            unfreezes_at = 3 * (len(groups) - 1 - index)
            same = all(torch.equal(p, q) for (_, p), q in zip(group, initial[index], strict=True))
            assert same == (step < unfreezes_at), (step, index)

    train(model, cfg, batch, steps, lr=1e-3, weight_decay=0.01, on_each_step=check)
