"""The architecture table against real (tiny) models: every name in each ArchSpec resolves."""

import pytest
from peft import LoraConfig, get_peft_model
from torch import nn

from tunelab.errors import ModelError
from tunelab.models import ARCHS, TINY_ARCHS, arch_of, decoder_layers, random_model
from tunelab.models.arch import get_submodule, layer_prefix
from tunelab.models.tiny import LAYERS


@pytest.fixture(scope="module", params=TINY_ARCHS)
def tiny(request):
    model, _tokenizer = random_model(request.param)
    return request.param, model


def test_arch_of_names_the_family(tiny):
    arch, model = tiny
    assert arch_of(model) is ARCHS[model.config.model_type]  # gemma3: "gemma3_text"
    assert arch_of(model).family == arch


def test_every_spec_name_resolves(tiny):
    _arch, model = tiny
    spec = arch_of(model)
    layers = decoder_layers(model)
    assert isinstance(layers, nn.ModuleList) and len(layers) == LAYERS
    block = layers[0]
    attention = getattr(block, spec.attention)
    mlp = getattr(block, spec.mlp)
    for name in spec.attention_projections:
        assert hasattr(getattr(attention, name), "weight"), name
    for name in spec.mlp_projections:
        assert hasattr(getattr(mlp, name), "weight"), name
    assert isinstance(get_submodule(model, spec.embeddings), nn.Embedding)
    assert isinstance(get_submodule(model, spec.final_norm), nn.Module)
    head = get_submodule(model, spec.head)
    assert head.weight.shape[0] == model.config.vocab_size


def test_bias_flags_match_the_model(tiny):
    _arch, model = tiny
    spec = arch_of(model)
    block = decoder_layers(model)[0]
    mlp = getattr(block, spec.mlp)
    mlp_biases = [getattr(mlp, name).bias is not None for name in spec.mlp_projections]
    if spec.has_biases:
        assert all(mlp_biases)
    else:
        assert not any(mlp_biases)


def test_table_survives_peft_wrapping():
    model, _tokenizer = random_model("llama")
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert arch_of(wrapped).family == "llama"
    assert decoder_layers(wrapped) is decoder_layers(model)
    prefix = layer_prefix(wrapped)
    assert wrapped.get_submodule(prefix) is decoder_layers(model)


def test_unknown_architecture_is_a_model_error():
    model, _tokenizer = random_model("llama")
    model.config.model_type = "mamba"
    with pytest.raises(ModelError, match="'mamba' is not in the table"):
        arch_of(model)
