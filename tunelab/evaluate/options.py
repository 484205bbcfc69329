"""Option scoring: classification accuracy without parsing generated text.

For an example with listed options (a classification task's labels), the model's answer is
the option with the highest log-likelihood after the prompt: sum over the option's tokens and
the EOS that ends it of log p(token | prompt, earlier option tokens). EOS is included so that
an option that is a prefix of another ("science" vs "science/technology") is not favoured for
being shorter. The options are tokenised exactly as training tokenises a response
(`tokenize_examples`: same BOS rule, same prompt/response boundary), and each option is scored
by the loss function training uses, so every method (prompt tuning included) scores the same
way it learned. This is the rank classification of Brown et al. 2020 and FLAN's evaluation.
"""

from __future__ import annotations

from torch import nn

from tunelab.config import DataConfig
from tunelab.data.batching import padded_batch
from tunelab.data.tokenize import tokenize_examples
from tunelab.data.types import Example
from tunelab.evaluate.metrics import normalize
from tunelab.evaluate.modes import inference, model_device
from tunelab.training.loss import token_loss_sum

SCORING = DataConfig(max_length=4096, packing=False)  # long enough that nothing is cut


def option_log_likelihoods(
    model: nn.Module, tokenizer, prompt: str, options: list[str]
) -> list[float]:
    """log p(option + EOS | prompt) for each option, in order."""
    candidates = [Example(prompt, option) for option in options]
    items = tokenize_examples(candidates, tokenizer, SCORING)
    if len(items) != len(options):
        raise ValueError("an option has no tokens to score (empty option text)")
    scores = []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with inference(model):
        device = model_device(model)
        for item in items:  # one row at a time: a row's loss is its own, whatever the method
            batch = {k: v.to(device) for k, v in padded_batch([item], pad_id).items()}
            loss_sum, _ = token_loss_sum(model, batch)
            scores.append(-float(loss_sum))
    return scores


def predict_option(model: nn.Module, tokenizer, example: Example) -> str:
    """The example's option with the highest log-likelihood (the first of equal ones)."""
    scores = option_log_likelihoods(model, tokenizer, example.prompt, list(example.options))
    return example.options[max(range(len(scores)), key=scores.__getitem__)]


def option_accuracy(model: nn.Module, tokenizer, examples: list[Example]) -> float:
    """Percent of examples whose highest-scoring option is the label (0-100)."""
    scored = [example for example in examples if example.options]
    if not scored:
        raise ValueError("option_accuracy needs examples with options (classification tasks)")
    hits = 0
    for example in scored:
        reference = example.label if example.label is not None else example.response
        predicted = predict_option(model, tokenizer, example)
        hits += normalize(predicted).casefold() == normalize(reference).casefold()
    return 100.0 * hits / len(scored)
