"""Option scoring: classification accuracy without parsing generated text.

For an example with listed options (a classification task's labels), the model's answer is
the option with the highest log-likelihood after the prompt: sum over the option's tokens and
the EOS that ends it of log p(token | prompt, earlier option tokens). EOS is included so that
an option that is a prefix of another ("science" vs "science/technology") is not favoured for
being shorter. The options are tokenised exactly as training tokenises a response
(`tokenize_examples`: same BOS rule, same prompt/response boundary), and each option is scored
by the loss function training uses, so every method (prompt tuning included) scores the same
way it learned. This is the rank classification of Brown et al. 2020 and FLAN's evaluation.

The options of one example share its prompt, which is most of every row: where the model takes
a KV cache of its own (every method but the prompt-learning ones, whose virtual tokens or
prefix own the cache), the prompt runs once and all options run as one batch on top of its
cache, about (options x) less work than a row per option; the scores are the same (tested
against the brute-force computation).
"""

from __future__ import annotations

import torch
from torch import nn

from tunelab.compat import accepts_logits_to_keep, transformers_model
from tunelab.config import DataConfig
from tunelab.data.batching import padded_batch
from tunelab.data.tokenize import tokenize_examples
from tunelab.data.types import IGNORE, Example, Tokenized
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
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with inference(model):
        start = _shared_prompt(items)
        if start and _owns_cache(model):
            return _scores_on_prompt_cache(model, items, start, pad_id)
        scores = []
        device = model_device(model)
        for item in items:  # one row at a time: a row's loss is its own, whatever the method
            batch = {k: v.to(device) for k, v in padded_batch([item], pad_id).items()}
            loss_sum, _ = token_loss_sum(model, batch)
            scores.append(-float(loss_sum))
    return scores


def _shared_prompt(items: list[Tokenized]) -> int:
    """Length of the unlabelled prompt every row starts with, or 0 if the rows differ there."""
    starts = {next(i for i, label in enumerate(item.labels) if label != IGNORE) for item in items}
    if len(starts) != 1:
        return 0
    start = starts.pop()
    first = list(items[0].input_ids[:start])
    return start if all(list(item.input_ids[:start]) == first for item in items) else 0


def _owns_cache(model: nn.Module) -> bool:
    """A transformers model (under any PEFT method but prompt learning) whose KV cache we may
    fill ourselves."""
    config = getattr(model, "active_peft_config", None)
    return transformers_model(model) is not None and not getattr(
        config, "is_prompt_learning", False
    )


def _scores_on_prompt_cache(model, items: list[Tokenized], start: int, pad_id: int) -> list:
    """The prompt once (its cache repeated per option), then every option's tokens in one
    right-padded batch; log p of each labelled token summed per row."""
    device = model_device(model)
    prompt = torch.tensor([list(items[0].input_ids[:start])], device=device)  # (1, P)
    keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    head = model(input_ids=prompt, use_cache=True, **keep)
    first = torch.log_softmax(head.logits[0, -1].float(), dim=-1)  # predicts the option's 1st
    cache = head.cache
    cache.batch_repeat_interleave(len(items))
    tails = [list(item.input_ids[start:]) for item in items]
    width = max(len(tail) for tail in tails)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long, device=device)  # (B, W)
    mask = torch.zeros((len(items), start + width), dtype=torch.long, device=device)
    for row, tail in enumerate(tails):
        ids[row, : len(tail)] = torch.tensor(tail, device=device)
        mask[row, : start + len(tail)] = 1
    positions = torch.arange(start, start + width, device=device).expand(len(items), -1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache)
    logp = torch.log_softmax(out.logits.float(), dim=-1)  # (B, W, V): predicts tail[j + 1]
    scores = []
    for row, (item, tail) in enumerate(zip(items, tails, strict=True)):
        labels = list(item.labels[start:])
        total = float(first[tail[0]]) if labels[0] != IGNORE else 0.0
        total += sum(float(logp[row, j, tail[j + 1]]) for j in range(len(tail) - 1)
                     if labels[j + 1] != IGNORE)  # fmt: skip
        scores.append(total)
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
