"""evaluate(): the exact token-mean loss over hand-built batches, perplexity = exp(loss),
generative metrics scored once on shared predictions, samples for writing out."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tunelab.data.types import Example
from tunelab.errors import ConfigError
from tunelab.evaluate import evaluate, evaluate_with_predictions, generate

SETTINGS = dict(max_new_tokens=6, batch_size=4)


def make_batch(tokenizer, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) batch; loss only on response tokens."""
    rows = []
    for prompt, response in pairs:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        rows.append((prompt_ids + response_ids, [-100] * len(prompt_ids) + response_ids))
    length = max(len(ids) for ids, _ in rows)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids, labels in rows:
        padding = length - len(ids)
        batch["input_ids"].append(ids + [tokenizer.pad_token_id] * padding)
        batch["attention_mask"].append([1] * len(ids) + [0] * padding)
        batch["labels"].append(labels + [-100] * padding)
    return {key: torch.tensor(value) for key, value in batch.items()}


def hand_loss(model, batches) -> tuple[float, int]:
    """(sum of next-token cross-entropies on labelled positions, their count)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            targets = batch["labels"][:, 1:]  # (B, T-1)
            losses = F.cross_entropy(
                logits.logits[:, :-1].transpose(1, 2), targets, ignore_index=-100, reduction="none"
            )  # (B, T-1)
            total += float(losses[targets != -100].sum())
            count += int((targets != -100).sum())
    return total, count


@pytest.fixture(scope="module")
def batches(tiny):
    _, tokenizer = tiny
    return [
        make_batch(tokenizer, [("Q: 1+1? A: ", "two"), ("hi ", "there, friend")]),
        make_batch(tokenizer, [("x", "y")]),
    ]


def test_loss_is_token_mean_over_all_batches(tiny, batches):
    model, tokenizer = tiny
    model.train()
    scores = evaluate(
        model, tokenizer, [], ["loss", "perplexity"], loss_batches=batches, **SETTINGS
    )
    assert model.training
    model.eval()
    total, count = hand_loss(model, batches)
    assert list(scores) == ["loss", "perplexity"]
    assert scores["loss"] == pytest.approx(total / count, rel=1e-5)
    assert scores["perplexity"] == pytest.approx(math.exp(scores["loss"]), rel=1e-9)
    mean_of_means = sum(hand_loss(model, [b])[0] / hand_loss(model, [b])[1] for b in batches) / 2
    assert scores["loss"] != pytest.approx(mean_of_means, rel=1e-3)  # weighted by tokens


def test_loss_needs_batches_and_labels(tiny, batches):
    model, tokenizer = tiny
    assert evaluate(model, tokenizer, [], ["perplexity"], loss_batches=None, **SETTINGS) == {}
    assert list(
        evaluate(model, tokenizer, [], ["perplexity"], loss_batches=batches, **SETTINGS)
    ) == ["perplexity"]
    unlabelled = [{**batches[1], "labels": torch.full_like(batches[1]["labels"], -100)}]
    with pytest.raises(ValueError, match="no labelled tokens"):
        evaluate(model, tokenizer, [], ["loss"], loss_batches=unlabelled, **SETTINGS)


def test_generative_metrics_share_one_generation(tiny, monkeypatch):
    model, tokenizer = tiny
    prompts = ["hello", "zzz top", "ok", "xy"]
    outputs = generate(model, tokenizer, prompts, **SETTINGS)
    assert all(outputs[:3]) and not any("\n" in output for output in outputs[:3])
    examples = [
        Example(prompts[0], outputs[0]),
        Example(prompts[1], "something else", label=outputs[1].upper()),
        Example(prompts[2], outputs[2]),
        Example(prompts[3], outputs[3]),  # beyond max_examples
    ]
    calls = []  # batches decoded (greedy decoding runs its own loop, not model.generate)
    import tunelab.evaluate.generation as generation

    real_batch = generation.generate_batch
    monkeypatch.setattr(
        generation, "generate_batch", lambda *args: calls.append(1) or real_batch(*args)
    )
    metrics = ["exact_match", "loss", "accuracy", "chrf"]
    scores, samples = evaluate_with_predictions(
        model, tokenizer, examples, metrics, loss_batches=None, max_examples=3, **SETTINGS
    )
    assert len(calls) == 1
    assert list(scores) == ["exact_match", "accuracy", "chrf"]
    assert scores["exact_match"] == pytest.approx(200 / 3)  # example 2's response differs
    assert scores["accuracy"] == pytest.approx(100.0)  # example 2 is scored on its label
    assert samples == [
        {"prompt": e.prompt, "reference": e.response, "prediction": o}
        for e, o in zip(examples[:3], outputs[:3], strict=True)
    ]


def test_bad_requests_are_errors(tiny):
    model, tokenizer = tiny
    with pytest.raises(ConfigError, match="unknown metric 'blue'"):
        evaluate(model, tokenizer, [], ["blue"], loss_batches=None, **SETTINGS)
    with pytest.raises(ValueError, match="no evaluation examples"):
        evaluate(model, tokenizer, [], ["chrf"], loss_batches=None, **SETTINGS)
