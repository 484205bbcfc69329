"""The PEFT methods added here (IA³, prefix, prompt and p-tuning) beyond the method matrix
(test_contract.py): trainable counts worked out by hand, the loss scoring the text positions
behind virtual tokens, save -> load of the reparametrised variants, and cached generation for
the prompt-learning methods (tunelab.methods.prompt_cache) with large trained values: it equals
decoding without a cache and really feeds one new position per step."""

from __future__ import annotations

import pytest
import torch

from tunelab.errors import MergeNotSupported
from tunelab.evaluate import generate
from tunelab.methods import METHODS
from tunelab.methods.base import count_parameters
from tunelab.methods.prefix import cache_tensors
from tunelab.methods.prompt_cache import generate_tokens
from tunelab.models.tiny import HIDDEN, LAYERS, TINY_ARCHS
from tunelab.training.loss import token_loss_sum

from .conftest import PROMPTS, VIRTUAL, applied, greedy_without_cache, logits, spread_model, train

PROMPT_LEARNING = ["prefix", "prompt", "ptuning"]
LLAMA_LIKE = ("llama", "qwen2", "gemma", "gemma3", "mistral")
KV = 32  # llama-like tiny models: 2 key/value heads of 16; bloom and gpt2 use all 64
EXPECTED_TRAINABLE = {  # by hand from the tiny configs (see tunelab/models/tiny.py)
    "ia3": {  # PEFT's default targets: (k or q, v outputs) + down-projection input, per layer
        "llama": LAYERS * (KV + KV + 2 * HIDDEN),
        "mistral": LAYERS * (KV + KV + 2 * HIDDEN),
        "qwen2": LAYERS * (HIDDEN + KV + 2 * HIDDEN),  # q rather than k
        "gemma": LAYERS * (HIDDEN + KV + 2 * HIDDEN),
        "gemma3": LAYERS * (HIDDEN + KV + 2 * HIDDEN),
        "bloom": LAYERS * (3 * HIDDEN + 4 * HIDDEN),
        "gpt2": LAYERS * (3 * HIDDEN + 4 * HIDDEN),
    },
    "prefix": dict.fromkeys(LLAMA_LIKE, VIRTUAL * LAYERS * 2 * KV)
    | {arch: VIRTUAL * LAYERS * 2 * HIDDEN for arch in ("bloom", "gpt2")},
    "prompt": dict.fromkeys(TINY_ARCHS, VIRTUAL * HIDDEN),
    "ptuning": dict.fromkeys(  # embedding + MLP H -> 16 -> 16 -> H with biases
        TINY_ARCHS, VIRTUAL * HIDDEN + (HIDDEN * 16 + 16) + (16 * 16 + 16) + (16 * HIDDEN + HIDDEN)
    ),
}
NEW = 8


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("name", list(EXPECTED_TRAINABLE))
def test_trainable_counts(name, arch):
    model, _, _, _ = applied(name, arch)
    assert count_parameters(model)[0] == EXPECTED_TRAINABLE[name][arch]


@pytest.mark.parametrize("name", PROMPT_LEARNING)
def test_loss_scores_the_text_positions(name):
    """token_loss_sum keeps only the logits it needs; with virtual tokens in front it must
    shift to the text's positions (reference: every logit, the last T of them)."""
    model, batch, _, _ = randomized(name, "llama")
    labels = batch["labels"]
    with torch.no_grad():
        loss_sum, n_tokens = token_loss_sum(model, batch)
    predictions = logits(model, batch)[:, -labels.shape[1] :][:, :-1]  # (B, T-1, vocab)
    expected = torch.nn.functional.cross_entropy(
        predictions.reshape(-1, predictions.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum"
    )
    assert n_tokens == int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(loss_sum, expected)


@pytest.mark.parametrize("width", [None, 24])
def test_prefix_projection_roundtrip(width, tmp_path):
    """With the MLP reparametrisation PEFT saves the projected prefix; loading needs no MLP."""
    roundtrip_variant("prefix", {"prefix_projection": True, "encoder_hidden_size": width}, tmp_path)


def test_ptuning_lstm_roundtrip(tmp_path):
    roundtrip_variant("ptuning", {"encoder_reparameterization_type": "LSTM"}, tmp_path)


def roundtrip_variant(name: str, extra: dict, directory) -> None:
    """A few steps on llama, then save -> load into a fresh base gives the same logits."""
    model, cfg, batch, _ = applied(name, "llama", **extra)
    losses = train(model, cfg, batch, steps=6, lr=METHODS[name].default_lr)
    assert losses[-1] < losses[0]
    METHODS[name].save(model, cfg, directory)
    loaded = METHODS[name].load(spread_model("llama")[0], cfg, directory).eval()
    # PEFT saves the encoder's output, not the encoder: the loaded prompt differs by rounding
    # (~3e-8 with the LSTM), which the spread weights amplify; training moves far more than 1e-4
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), atol=1e-4, rtol=0)


def randomized(name: str, arch: str):
    """(model, batch, tokenizer, base outputs): the method on spread base weights, with large
    random trained values, so its part in every token is visible."""
    model, _, batch, tokenizer = applied(name, arch)
    before = generate(spread_model(arch)[0], tokenizer, PROMPTS, max_new_tokens=NEW, batch_size=4)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator))
    return model, batch, tokenizer, before


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("name", PROMPT_LEARNING)
def test_cached_generation_equals_no_cache(name, arch):
    model, _, tokenizer, before = randomized(name, arch)
    cached = generate(model, tokenizer, PROMPTS, max_new_tokens=NEW, batch_size=4)
    assert cached == [greedy_without_cache(model, tokenizer, prompt, NEW) for prompt in PROMPTS]
    assert cached != before  # the virtual tokens or the prefix take part


@pytest.mark.parametrize("name", PROMPT_LEARNING)
def test_generation_uses_the_cache(name):
    """After the first step each decoder call sees one new position, not the whole text."""
    model, _, tokenizer, _ = randomized(name, "llama")
    lengths = []
    layer = model.get_base_model().model.layers[0]
    layer.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    ids = tokenizer(["abc def"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        tokens = generate_tokens(
            model, ids, torch.ones_like(ids), max_new_tokens=4, eos_ids=[-1], pad_id=0
        )
    assert tokens.shape == (1, ids.shape[1] + 4)
    first = ids.shape[1] + (0 if name == "prefix" else VIRTUAL)
    assert lengths == [first, 1, 1, 1]


def test_prompt_init_text_copies_token_embeddings():
    model, _, _, tokenizer = applied("prompt", "llama", init_text="abc")  # cycled over 4
    ids = tokenizer("abca", add_special_tokens=False)["input_ids"]
    expected = model.get_input_embeddings().weight[ids]
    assert torch.equal(model.prompt_encoder["default"].embedding.weight, expected)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_prefix_starts_as_the_model_reading_its_init_text(arch):
    """The prefix holds the keys and values of `init_text` (cycled over 4 positions): the
    prefixed model's logits are the base model's on the text followed by the input."""
    model, _, _, tokenizer = applied("prefix", arch, init_text="abc")
    text = torch.tensor([tokenizer("abca", add_special_tokens=False)["input_ids"]])  # (1, 4)
    ids = torch.tensor([tokenizer("hello world", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        prefixed = model(input_ids=ids).logits  # (1, T, vocab)
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
            reading = model(input_ids=torch.cat([text, ids], dim=1)).logits[:, VIRTUAL:]
    torch.testing.assert_close(prefixed, reading, atol=1e-5, rtol=0)
    assert not torch.allclose(prefixed, plain, atol=1e-3)


def test_prefix_default_init_reads_vocabulary_tokens():
    """Without init_text the prefix is the model's own keys and values for sampled tokens, not
    PEFT's N(0, 1) table: in the first layer each virtual position's values are those of one
    vocabulary token (values carry no position and, in layer 0, no context)."""
    model, _, _, _ = applied("prefix", "llama")
    values = cache_tensors(model.get_prompt(batch_size=1))[1][0]  # layer 0: (heads, V, d)
    layer = model.get_base_model().model.layers[0]
    with torch.no_grad():
        vocab = layer.self_attn.v_proj(layer.input_layernorm(model.get_input_embeddings().weight))
    vocab = vocab.view(vocab.shape[0], values.shape[0], 1, values.shape[2])  # (vocab, heads, 1, d)
    nearest = (vocab - values).abs().amax(dim=(1, 3)).amin(dim=0)  # (V,): best token's error
    assert nearest.max() < 1e-5


@pytest.mark.parametrize("name", PROMPT_LEARNING)
def test_prompt_learning_does_not_merge(name):
    method = METHODS[name]
    assert not method.mergeable and method.prompt_learning
    assert method.supports_packing  # on packed rows (tests/training/test_packed_virtual_tokens)
    model, cfg, _, _ = applied(name, "gpt2")
    with pytest.raises(MergeNotSupported, match=name):
        method.merge(model, cfg)
