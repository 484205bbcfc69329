"""Greedy decoding in which finished rows leave the batch: token for token what transformers'
`generate` gives on the same batch (every tiny architecture, tunelab's guards and newline stop
included), while the rows that stopped are no longer run through the model."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteriaList

from tunelab.evaluate.decoding import NewlineStop, NewNGramGuard, OutputRepetitionPenalty
from tunelab.evaluate.generation import encode_prompts, left_pad, stop_token_ids
from tunelab.evaluate.greedy import can_shrink, greedy_generate
from tunelab.evaluate.modes import inference
from tunelab.models.tiny import TINY_ARCHS, random_model

PROMPTS = ["hello world, a longer prompt", "hi", "abc def", "x", "fifth?"]


def varied_model(arch: str):
    """Tiny `arch` with weights redrawn at std 0.3, so greedy outputs vary token to token."""
    model, tokenizer = random_model(arch, seed=1)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model, tokenizer


class EndAfter(LogitsProcessor):
    """Forces EOS once row r has generated budgets[r] tokens (per-row state, like tunelab's
    guards, narrowed by `keep_rows`)."""

    def __init__(self, budgets: list[int], eos: int) -> None:
        self.budgets, self.eos, self.steps = list(budgets), eos, 0

    def __call__(self, input_ids, scores):
        self.steps += 1
        scores = scores.clone()
        for row, budget in enumerate(self.budgets):
            if self.steps > budget:
                scores[row, self.eos] = 1e4
        return scores

    def keep_rows(self, rows: list[int]) -> None:
        self.budgets = [self.budgets[row] for row in rows]


def both_ways(model, tokenizer, prompts, options_for):
    """(generate's tokens, greedy_generate's tokens) on the same left-padded batch; options
    are built fresh for each side (the processors keep state)."""
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    batch = left_pad(encode_prompts(tokenizer, prompts), pad_id)
    with inference(model):
        expected = model.generate(**batch, **options_for(), use_cache=True, eos_token_id=stop_ids,
                                  pad_token_id=pad_id)  # fmt: skip
        got = greedy_generate(model, batch["input_ids"], batch["attention_mask"],
                              stop_ids=stop_ids, pad_id=pad_id, **options_for())  # fmt: skip
    return expected, got


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_same_tokens_as_generate_with_the_guards_and_the_newline_stop(arch):
    model, tokenizer = varied_model(arch)
    prompts = [*PROMPTS, "a prompt longer than the sliding window of sixteen tokens"]
    rows = encode_prompts(tokenizer, prompts)

    def options():
        return {
            "max_new_tokens": 24,
            "logits_processor": LogitsProcessorList(
                [NewNGramGuard(3, rows), OutputRepetitionPenalty(1.3, rows, tokenizer)]
            ),
            "stopping_criteria": StoppingCriteriaList([NewlineStop(tokenizer, len(rows))]),
            "no_repeat_ngram_size": 4,
        }

    assert can_shrink(model, options())
    expected, got = both_ways(model, tokenizer, prompts, options)
    assert torch.equal(got, expected)


def test_finished_rows_leave_the_batch_and_the_output_is_unchanged():
    model, tokenizer = varied_model("llama")
    budgets = [6, 1, 3, 9, 0]  # row r stops with the EOS after budgets[r] tokens
    eos = tokenizer.eos_token_id
    sizes: list[int] = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )

    def options():
        return {"max_new_tokens": 12, "logits_processor": [EndAfter(budgets, eos)]}

    expected, got = both_ways(model, tokenizer, PROMPTS, options)
    assert torch.equal(got, expected)
    generate_sizes, sizes = sizes[: len(sizes) // 2], sizes[len(sizes) // 2 :]
    assert generate_sizes == [5] * 10  # generate: every row until the last one stops
    # here: a row runs for its own tokens only (budget + the EOS), then leaves
    assert sizes == [sum(budget >= step for budget in budgets) for step in range(10)]
    new = got[:, got.shape[1] - 10 :]
    for row, budget in enumerate(budgets):
        assert new[row, budget] == eos and (new[row, budget + 1 :] == tokenizer.pad_token_id).all()


def test_what_it_does_not_handle_goes_to_generate():
    model, _ = random_model("llama")
    assert can_shrink(model, {"max_new_tokens": 4})
    assert not can_shrink(model, {"max_new_tokens": 4, "do_sample": True})
    assert not can_shrink(model, {"max_new_tokens": 4, "repetition_penalty": 1.2})
    rowless = StoppingCriteriaList([lambda ids, scores: ids[:, -1] == 0])  # no keep_rows
    assert not can_shrink(model, {"max_new_tokens": 4, "stopping_criteria": rowless})
    model.generation_config.repetition_penalty = 1.1  # the model's own config adds a processor
    assert not can_shrink(model, {"max_new_tokens": 4})
