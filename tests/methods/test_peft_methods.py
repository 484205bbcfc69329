"""The method matrix for the PEFT methods added here (IA³, prefix, prompt and p-tuning) on every
tiny architecture: trainable parameters as intended, frozen weights bit-identical after steps,
loss falls on a tiny overfit batch, save -> load reproduces logits, and generation with the KV
cache equals full forward passes without one, token for token."""

from __future__ import annotations

import pytest
import torch

from tunelab.errors import MergeNotSupported
from tunelab.evaluate import generate
from tunelab.loss import token_loss_sum
from tunelab.methods import METHODS, MethodContext
from tunelab.methods.base import count_parameters
from tunelab.methods.prompt_cache import generate_tokens
from tunelab.models.tiny import HIDDEN, LAYERS, TINY_ARCHS, random_model

V = 4  # virtual tokens: small, so the tiny models stay fast
SETTINGS = {
    "ia3": {},
    "prefix": {"num_virtual_tokens": V},
    "prompt": {"num_virtual_tokens": V},
    "ptuning": {"num_virtual_tokens": V, "encoder_hidden_size": 16},
}
KV = 32  # llama-like tiny models: 2 key/value heads of 16; bloom and gpt2 use all 64
EXPECTED_TRAINABLE = {  # by hand from the tiny configs (see tunelab/models/tiny.py)
    "ia3": {  # PEFT's default targets: (k or q, v outputs) + down-projection input, per layer
        "llama": LAYERS * (KV + KV + 2 * HIDDEN),
        "qwen2": LAYERS * (HIDDEN + KV + 2 * HIDDEN),
        "gemma": LAYERS * (HIDDEN + KV + 2 * HIDDEN),
        "bloom": LAYERS * (3 * HIDDEN + 4 * HIDDEN),
        "gpt2": LAYERS * (3 * HIDDEN + 4 * HIDDEN),
    },
    "prefix": {arch: V * LAYERS * 2 * KV for arch in ("llama", "qwen2", "gemma")}
    | {arch: V * LAYERS * 2 * HIDDEN for arch in ("bloom", "gpt2")},
    "prompt": dict.fromkeys(TINY_ARCHS, V * HIDDEN),
    "ptuning": dict.fromkeys(  # embedding + MLP H -> 16 -> 16 -> H with biases
        TINY_ARCHS, V * HIDDEN + (HIDDEN * 16 + 16) + (16 * 16 + 16) + (16 * HIDDEN + HIDDEN)
    ),
}
TEXTS = ["the cat sat on the mat", "reverse: abc -> cba", "hello world"]
PROMPTS = ["hello world, a longer prompt", "hi", "abc def", "x!"]
NEW = 8


def settings(name: str, **extra):
    return METHODS[name].Config(name=name, **(SETTINGS[name] | extra))


def overfit_batch(tokenizer) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, labels (B, T), right-padded as the trainer pads."""
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(row)
        attention_mask[index, : len(row)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def mean_loss(model, batch) -> torch.Tensor:
    loss_sum, n_tokens = token_loss_sum(model, batch)
    return loss_sum / n_tokens


def train_steps(model, batch, lr: float, steps: int) -> tuple[float, float]:
    """(loss before, loss after) `steps` AdamW steps, both measured in eval mode (no dropout)."""
    torch.manual_seed(0)  # dropout masks during the steps
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    with torch.no_grad():
        before = mean_loss(model.eval(), batch).item()
    model.train()
    for _ in range(steps):
        loss = mean_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = mean_loss(model.eval(), batch).item()
    return before, after


def tiny(arch: str):
    """(model, tokenizer): a tiny random `arch` with its matrices redrawn with std 0.3, so its
    outputs depend on every activation (at the default init they are near uniform) and greedy
    continuations vary from token to token. Same every call."""
    model, tokenizer = random_model(arch)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model, tokenizer


def greedy_without_cache(model, tokenizer, prompt: str) -> str:
    """Reference decoding: one full forward pass per new token, no cache, argmax, stop at EOS."""
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(NEW):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
            token = int(logits.logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("name", list(SETTINGS))
def test_train_save_load(name, arch, tmp_path):
    base, tokenizer = tiny(arch)
    frozen = [(param, param.detach().clone()) for param in base.parameters()]
    method, cfg = METHODS[name], settings(name)
    torch.manual_seed(0)  # the method's initial values
    model = method.apply(base, cfg, MethodContext(tokenizer=tokenizer))
    assert count_parameters(model)[0] == EXPECTED_TRAINABLE[name][arch]
    batch = overfit_batch(tokenizer)
    before, after = train_steps(model, batch, method.default_lr, steps=12)
    assert after < before - 0.05, (before, after)
    assert all(torch.equal(param, original) for param, original in frozen)
    method.save(model, cfg, tmp_path)
    loaded = method.load(tiny(arch)[0], cfg, tmp_path)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=1e-5
        )
    reloaded = generate(loaded, tokenizer, PROMPTS, max_new_tokens=NEW, batch_size=4)
    assert reloaded == [greedy_without_cache(loaded, tokenizer, prompt) for prompt in PROMPTS]


@pytest.mark.parametrize("name", ["prefix", "prompt", "ptuning"])
def test_loss_scores_the_text_positions(name):
    """token_loss_sum keeps only the logits it needs; with virtual tokens in front it must
    shift to the text's positions (reference: every logit, the last T of them)."""
    model, tokenizer, _ = randomized(name, "llama")
    batch = overfit_batch(tokenizer)
    labels = batch["labels"]
    with torch.no_grad():
        loss_sum, n_tokens = token_loss_sum(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, -labels.shape[1] :][:, :-1]  # (B, T-1, vocab): the text's predictions
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum"
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
    base, tokenizer = tiny("llama")
    method, cfg = METHODS[name], settings(name, **extra)
    model = method.apply(base, cfg, MethodContext(tokenizer=tokenizer))
    batch = overfit_batch(tokenizer)
    before, after = train_steps(model, batch, method.default_lr, steps=6)
    assert after < before
    method.save(model, cfg, directory)
    loaded = method.load(tiny("llama")[0], cfg, directory)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)


def randomized(name: str, arch: str):
    """(model, tokenizer, base outputs): spread base weights, then the method with random
    trained values, so its part in every token is visible."""
    base, tokenizer = tiny(arch)
    before = generate(base, tokenizer, PROMPTS, max_new_tokens=NEW, batch_size=4)
    model = METHODS[name].apply(base, settings(name), MethodContext(tokenizer=tokenizer))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=generator)
                param.add_(noise * (0.5 if name == "ia3" else 1.0))
    return model.eval(), tokenizer, before


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("name", list(SETTINGS))
def test_cached_generation_equals_no_cache(name, arch):
    model, tokenizer, before = randomized(name, arch)
    cached = generate(model, tokenizer, PROMPTS, max_new_tokens=NEW, batch_size=4)
    assert cached == [greedy_without_cache(model, tokenizer, prompt) for prompt in PROMPTS]
    assert cached != before  # the virtual tokens, prefix or scaling take part


@pytest.mark.parametrize("name", ["prefix", "prompt", "ptuning"])
def test_generation_uses_the_cache(name):
    """After the first step each decoder call sees one new position, not the whole text."""
    model, tokenizer, _ = randomized(name, "llama")
    lengths = []
    layer = model.get_base_model().model.layers[0]
    layer.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    ids = tokenizer(["abc def"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        tokens = generate_tokens(
            model, ids, torch.ones_like(ids), max_new_tokens=4, eos_ids=[-1], pad_id=0
        )
    assert tokens.shape == (1, ids.shape[1] + 4)
    first = ids.shape[1] + (0 if name == "prefix" else V)
    assert lengths == [first, 1, 1, 1]


def test_prompt_init_text_copies_token_embeddings():
    base, tokenizer = random_model("llama")
    cfg = settings("prompt", init_text="abc")  # 3 tokens cycled over 4 virtual tokens
    model = METHODS["prompt"].apply(base, cfg, MethodContext(tokenizer=tokenizer))
    ids = tokenizer("abca", add_special_tokens=False)["input_ids"]
    expected = base.get_input_embeddings().weight[ids]
    assert torch.equal(model.prompt_encoder["default"].embedding.weight, expected)


@pytest.mark.parametrize("name", ["prefix", "prompt", "ptuning"])
def test_prompt_learning_does_not_merge(name):
    method = METHODS[name]
    assert not method.mergeable and not method.supports_packing and method.prompt_learning
    model = method.apply(random_model("gpt2")[0], settings(name), MethodContext())
    with pytest.raises(MergeNotSupported, match=name):
        method.merge(model, settings(name))
