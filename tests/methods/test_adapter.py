"""Bottleneck adapters (Houlsby) beyond the method matrix (test_contract.py): how many
parameters train, placement after the MLP only with trained layer norms, BLOOM's residual
handling, and the reason merging is refused."""

from __future__ import annotations

import pytest
import torch

from tunelab.errors import MergeNotSupported
from tunelab.methods import METHODS
from tunelab.methods.adapter import AdaptedSublayer
from tunelab.methods.base import count_parameters
from tunelab.models.arch import decoder_layers
from tunelab.models.tiny import HIDDEN, LAYERS, TINY_ARCHS

from .conftest import applied

METHOD = METHODS["adapter"]
ADAPTER_PARAMETERS = 2 * HIDDEN * 64 + HIDDEN + 64  # down + up, weights and biases, size 64


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_two_adapters_per_block_train(arch):
    model, _, _, _ = applied("adapter", arch)
    assert count_parameters(model)[0] == LAYERS * 2 * ADAPTER_PARAMETERS


def test_merge_is_refused_with_a_reason():
    model, cfg, _, _ = applied("adapter", "llama")
    with pytest.raises(MergeNotSupported, match="nonlinearity"):
        METHOD.merge(model, cfg)


def test_mlp_placement_and_layer_norms():
    model, _, _, _ = applied("adapter", "llama", placement="mlp", train_layer_norms=True, size=8)
    blocks = decoder_layers(model)
    assert all(isinstance(block.mlp, AdaptedSublayer) for block in blocks)
    assert not any(isinstance(block.self_attn, AdaptedSublayer) for block in blocks)
    norms = LAYERS * 2 * HIDDEN + HIDDEN  # two RMSNorms per block and the final one
    assert count_parameters(model)[0] == LAYERS * (2 * HIDDEN * 8 + HIDDEN + 8) + norms


def test_bloom_adapter_sees_the_sublayer_output_not_the_residual():
    """BLOOM's MLP adds the residual itself; the adapter must act before that addition."""
    model, _, _, _ = applied("adapter", "bloom", nonlinearity="relu")
    wrapper = decoder_layers(model)[0].mlp
    torch.nn.init.normal_(wrapper.adapter.adapter_up.weight)  # a non-identity adapter
    hidden, residual = torch.randn(2, 1, 3, HIDDEN).unbind(0)
    with torch.no_grad():
        output = wrapper.base_layer(hidden, torch.zeros_like(residual))
        expected = wrapper.adapter(output) + residual
        torch.testing.assert_close(wrapper(hidden, residual), expected)
        torch.testing.assert_close(wrapper(hidden, residual=residual), expected)
