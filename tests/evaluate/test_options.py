"""Option scoring against a brute-force computation: one full forward pass per option token,
no batching, no head bypass, the log-softmax read off by hand."""

from __future__ import annotations

import pytest
import torch

from tunelab.data.types import Example
from tunelab.evaluate import evaluate
from tunelab.evaluate.options import option_accuracy, option_log_likelihoods, predict_option

OPTIONS = ["sports", "science", "science/technology", "travel", "health"]
PROMPTS = ["Which topic? The match ended 2-1.\n", "Topic of: a new vaccine\n", "Label:", "x"]


def brute_force(model, tokenizer, prompt: str, option: str) -> float:
    """sum_t log p(token_t | everything before it) over the option's tokens and EOS."""
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and tokenizer("a")["input_ids"][0] == bos and context[:1] != [bos]:
        context = [bos, *context]
    answer = tokenizer(option, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    total = 0.0
    with torch.no_grad():
        for token in answer:
            logits = model(input_ids=torch.tensor([context])).logits[0, -1]
            total += float(torch.log_softmax(logits.double(), dim=-1)[token])
            context = [*context, token]
    return total


def test_option_log_likelihoods_match_brute_force(tiny):
    model, tokenizer = tiny
    for prompt in PROMPTS:
        scores = option_log_likelihoods(model, tokenizer, prompt, OPTIONS)
        expected = [brute_force(model, tokenizer, prompt, option) for option in OPTIONS]
        assert scores == pytest.approx(expected, abs=1e-3)


def test_option_accuracy_matches_brute_force(tiny):
    model, tokenizer = tiny
    examples = [Example(p, OPTIONS[i % 5], label=OPTIONS[i % 5], options=tuple(OPTIONS))
                for i, p in enumerate(PROMPTS)]  # fmt: skip
    hits = 0
    for example in examples:
        scores = [brute_force(model, tokenizer, example.prompt, o) for o in OPTIONS]
        best = OPTIONS[scores.index(max(scores))]
        assert predict_option(model, tokenizer, example) == best
        hits += best == example.label
    expected = 100.0 * hits / len(examples)
    assert option_accuracy(model, tokenizer, examples) == pytest.approx(expected)
    scores = evaluate(model, tokenizer, examples, ["option_accuracy"], loss_batches=None,
                      max_new_tokens=2, batch_size=4)  # fmt: skip
    assert scores == {"option_accuracy": pytest.approx(expected)}


def test_option_accuracy_follows_the_labels(tiny):
    """Relabelling every example with its predicted option gives 100, any other option 0."""
    model, tokenizer = tiny
    base = [Example(p, "", options=tuple(OPTIONS)) for p in PROMPTS]
    predicted = [predict_option(model, tokenizer, e) for e in base]
    right = [
        Example(e.prompt, p, label=p, options=e.options)
        for e, p in zip(base, predicted, strict=True)
    ]
    wrong = [Example(e.prompt, "", label=next(o for o in OPTIONS if o != p), options=e.options)
             for e, p in zip(base, predicted, strict=True)]  # fmt: skip
    assert option_accuracy(model, tokenizer, right) == 100.0
    assert option_accuracy(model, tokenizer, wrong) == 0.0


def test_option_accuracy_needs_options(tiny):
    with pytest.raises(ValueError, match="needs examples with options"):
        option_accuracy(*tiny, [Example("p", "r")])


@pytest.mark.parametrize(
    ("method", "arch"),
    [("lora", "llama"), ("ia3", "gemma3"), ("adapter", "qwen2"), ("bitfit", "mistral"),
     ("prompt", "llama"), ("prefix", "qwen2")],
)  # fmt: skip
def test_every_method_scores_options_as_brute_force(method, arch):
    """The prompt-cache path (most methods) and the row-per-option path (prompt learning, whose
    virtual tokens own the cache) both give the brute-force log-likelihoods."""
    from tunelab.methods import METHODS, MethodContext
    from tunelab.models.tiny import random_model

    base, tokenizer = random_model(arch, seed=1)
    small = {"num_virtual_tokens": 3} if method in ("prompt", "prefix") else {}
    cfg = METHODS[method].Config(name=method, **small)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = METHODS[method].apply(base, cfg, MethodContext(tokenizer=tokenizer)).eval()
    with torch.no_grad():  # move every trainable value off its identity init
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.2)
    prompt = PROMPTS[0]
    scores = option_log_likelihoods(model, tokenizer, prompt, OPTIONS)
    expected = [brute_force(model, tokenizer, prompt, option) for option in OPTIONS]
    assert scores == pytest.approx(expected, abs=1e-3)
