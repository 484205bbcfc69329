"""evaluate(model, data) -> {metric: value}: token loss on batches, text metrics on generations.

- loss: total token cross-entropy / total labelled tokens over all `loss_batches` (an exact
  token mean, not a mean of batch means); perplexity = exp(loss). Computed only when asked for
  and when batches are given.
- generative metrics: the first `max_examples` examples (deterministic) are generated once and
  every requested generative metric scores the same predictions.

`evaluate_with_predictions` also returns the predictions so callers can write samples.
"""

from __future__ import annotations

import torch
from torch import nn

from tunelab.data.types import Example
from tunelab.errors import ConfigError
from tunelab.evaluate.decoding import resolve_options
from tunelab.evaluate.generation import generate
from tunelab.evaluate.metrics import METRICS, perplexity_from_loss
from tunelab.evaluate.modes import inference, model_device
from tunelab.training.loss import token_loss_sum

LOSS_METRICS = ("loss", "perplexity")


def evaluate(
    model: nn.Module, tokenizer, examples: list[Example], metrics: list[str], **options
) -> dict[str, float]:
    """{metric name: value} for the requested metrics; `options` as for
    `evaluate_with_predictions` (loss_batches, max_new_tokens, batch_size, ...)."""
    scores, _ = evaluate_with_predictions(model, tokenizer, examples, metrics, **options)
    return scores


def evaluate_with_predictions(
    model: nn.Module,
    tokenizer,
    examples: list[Example],
    metrics: list[str],
    *,
    loss_batches: list[dict] | None,
    max_new_tokens: int,
    batch_size: int,
    max_examples: int | None = None,
    progress: bool = False,
    decoding: dict | None = None,
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """(scores, samples): samples are {"prompt", "reference", "prediction"} per generated example.

    Scores keep the order of `metrics`; loss metrics are absent when `loss_batches` is None.
    Raises ConfigError for an unknown metric name and ValueError when a generative metric is
    asked for but there are no examples, or loss is asked for but the batches hold no tokens.
    """
    unknown = [name for name in metrics if name not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric {unknown[0]!r}; known: {', '.join(sorted(METRICS))}")
    scores: dict[str, float] = {}
    if loss_batches is not None and any(name in LOSS_METRICS for name in metrics):
        loss = mean_token_loss(model, loss_batches)
        scores.update(loss=loss, perplexity=perplexity_from_loss(loss))
    if "option_accuracy" in metrics:
        from tunelab.evaluate.options import option_accuracy

        chosen = examples[:max_examples] if max_examples is not None else examples
        scores["option_accuracy"] = option_accuracy(model, tokenizer, chosen)
    samples: list[dict[str, str]] = []
    generative = [name for name in metrics if METRICS[name].generative]
    if generative:
        chosen = examples[:max_examples] if max_examples is not None else examples
        if not chosen:
            raise ValueError(f"no evaluation examples to generate for {', '.join(generative)}")
        predictions = generate(
            model,
            tokenizer,
            [example.prompt for example in chosen],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
            **resolve_options(decoding or {}, [example.response for example in chosen]),
        )
        scores.update({name: score_predictions(name, predictions, chosen) for name in generative})
        samples = [
            {"prompt": example.prompt, "reference": example.response, "prediction": prediction}
            for example, prediction in zip(chosen, predictions, strict=True)
        ]
    return {name: scores[name] for name in metrics if name in scores}, samples


def score_predictions(name: str, predictions: list[str], examples: list[Example]) -> float:
    """Score `predictions` with metric `name` against the examples' references."""
    metric = METRICS[name]
    references = [
        example.label if metric.uses_label and example.label is not None else example.response
        for example in examples
    ]
    return float(metric.score(predictions, references))


def mean_token_loss(model: nn.Module, batches: list[dict]) -> float:
    """Sum of token losses / number of labelled tokens over all batches (model in eval mode)."""
    total, count = 0.0, 0
    with inference(model):
        device = model_device(model)
        for batch in batches:
            moved = {
                key: value.to(device) if isinstance(value, torch.Tensor) else value
                for key, value in batch.items()
            }
            loss_sum, tokens = token_loss_sum(model, moved)
            total += float(loss_sum)
            count += tokens
    if count == 0:
        raise ValueError("the loss batches hold no labelled tokens (all labels are -100)")
    return total / count
