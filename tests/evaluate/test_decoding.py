"""Decoding that does not loop: the repetition guard forbids repeats within an output but not
copies from the prompt, per row of a batch and on the prompt-learning path; the newline stop
ends a one-line answer; `auto` decides from the references."""

from __future__ import annotations

import torch
from peft import PromptTuningConfig, TaskType, get_peft_model
from transformers import LogitsProcessorList

from tunelab.evaluate import generate
from tunelab.evaluate.decoding import (
    NewlineStop,
    NewNGramGuard,
    first_line_answer,
    resolve_options,
    token_ngrams,
)
from tunelab.models.tiny import random_model

PROMPTS = ["hello world, a longer prompt", "hi", "abc def", "x"]


def repeated(tokens: list[int], n: int) -> set[tuple[int, ...]]:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return {gram for gram in grams if grams.count(gram) > 1}


def test_banned_tokens_spare_ngrams_of_the_prompt():
    guard = NewNGramGuard(3, [[9, 9]])
    assert guard.banned([1, 2, 3, 1, 2], set()) == [3]  # (1, 2, 3) would repeat
    assert guard.banned([1, 2, 3, 1, 2], {(1, 2, 3)}) == []  # ... but the prompt has it
    assert guard.banned([1, 2, 3, 4], set()) == []


def test_guard_counts_only_generated_tokens():
    """One call per step; the history is the generated part only (a prompt ending in 1, 2
    followed by output 6 does not ban 6 after an output 1, 2)."""
    guard = NewNGramGuard(3, [[9, 1, 2]])
    scores = torch.zeros(1, 16)
    output = [6, 1, 2, 6, 1]
    banned = []
    for step in range(len(output) + 1):
        ids = torch.tensor([[9, 1, 2, *output[:step]]])
        banned.append((~torch.isfinite(guard(ids, scores))[0]).nonzero().flatten().tolist())
    assert banned == [[], [], [], [], [], [2]]  # only (6, 1) -> 2 would repeat an output 3-gram
    assert scores.eq(0).all()  # the input scores are not modified in place


def test_guarded_greedy_never_repeats_a_new_ngram():
    model, tokenizer = random_model("llama")  # at the default init greedy decoding loops
    ids = tokenizer("ab", add_special_tokens=False, return_tensors="pt")["input_ids"]
    free = model.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=[], pad_token_id=0)
    assert repeated(free[0, 2:].tolist(), 3)  # this tiny model loops without the guard
    guard = LogitsProcessorList([NewNGramGuard(3, ids.tolist())])
    kept = model.generate(ids, max_new_tokens=40, do_sample=False, logits_processor=guard,
                          eos_token_id=[], pad_token_id=0)  # fmt: skip
    new = kept[0, 2:].tolist()
    assert len(new) == 40 and not repeated(new, 3) - token_ngrams(ids[0].tolist(), 3)


def test_guard_keeps_rows_apart_in_batches(fresh):
    model, tokenizer = fresh
    options = dict(max_new_tokens=24, repetition_guard=3)
    batched = generate(model, tokenizer, PROMPTS, batch_size=4, **options)
    alone = [generate(model, tokenizer, [p], batch_size=1, **options)[0] for p in PROMPTS]
    assert batched == alone
    assert batched != generate(model, tokenizer, PROMPTS, batch_size=4, max_new_tokens=24)
    peft = get_peft_model(model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM,
                                                    num_virtual_tokens=3))  # fmt: skip
    guarded = generate(peft, tokenizer, PROMPTS, batch_size=4, **options)
    assert guarded == [generate(peft, tokenizer, [p], batch_size=1, **options)[0] for p in PROMPTS]


class FakeTokenizer:
    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids)


def test_newline_stop_waits_for_text_before_the_newline():
    stop = NewlineStop(FakeTokenizer({0: "\n", 1: "Molo", 2: " wena", 3: "\nmore"}), rows=2)
    steps = [[0, 1], [1, 2], [2, 3]]  # row 0: "\n", "Molo", " wena"; row 1: "Molo", " wena", ...
    ids = torch.zeros(2, 0, dtype=torch.long)
    seen = []
    for step in steps:
        ids = torch.cat([ids, torch.tensor([step]).T], dim=1)
        seen.append(stop(ids, None).tolist())
    assert seen == [[False, False], [False, False], [False, True]]
    assert first_line_answer("\n Molo wena\nmore\n") == "Molo wena"


def test_stop_at_newline_ends_rows_and_keeps_the_first_line(tiny):
    model, tokenizer = tiny
    free = generate(model, tokenizer, PROMPTS, max_new_tokens=30, batch_size=4)
    cut = generate(model, tokenizer, PROMPTS, max_new_tokens=30, batch_size=4, stop_at_newline=True)
    assert all("\n" not in text for text in cut)
    assert cut == [first_line_answer(text) for text in free]


def test_auto_decides_from_the_references():
    options = {"stop_at_newline": "auto", "repetition_guard": 4}
    assert resolve_options(options, ["one line", "another"])["stop_at_newline"] is True
    assert resolve_options(options, ["two\nlines", "x"])["stop_at_newline"] is False
    assert resolve_options(options, [])["stop_at_newline"] is False
    assert options["stop_at_newline"] == "auto"  # the caller's dict is not changed


def test_default_decoding_guards_and_seeded_sampling(tiny):
    from tunelab.config import EvalConfig

    assert EvalConfig().decoding() == {
        "repetition_guard": 4, "output_repetition_penalty": 1.2, "stop_at_newline": "auto"
    }  # fmt: skip
    sampled = EvalConfig(do_sample=True, sample_seed=3, repetition_guard=0).decoding()
    assert sampled["do_sample"] and sampled["seed"] == 3
    model, tokenizer = tiny
    options = dict(max_new_tokens=12, batch_size=4, do_sample=True, top_p=1.0, temperature=1.0)
    first = generate(model, tokenizer, PROMPTS, seed=3, **options)
    assert generate(model, tokenizer, PROMPTS, seed=3, **options) == first
    assert generate(model, tokenizer, PROMPTS, seed=4, **options) != first


def test_output_penalty_spares_prompt_tokens_and_counts_only_the_output():
    from tunelab.evaluate.decoding import OutputRepetitionPenalty

    penalty = OutputRepetitionPenalty(2.0, [[1, 2]])
    scores = torch.tensor([[4.0, 4.0, 4.0, -4.0, 4.0]])
    assert torch.equal(penalty(torch.tensor([[1, 2]]), scores), scores)  # nothing generated yet
    out = penalty(torch.tensor([[1, 2, 3]]), scores)  # generated 3: penalised
    assert out.tolist() == [[4.0, 4.0, 4.0, -8.0, 4.0]]
    out = penalty(torch.tensor([[1, 2, 3, 1]]), scores)  # 1 is the prompt's: free to copy
    assert out.tolist() == [[4.0, 4.0, 4.0, -8.0, 4.0]]


def test_output_penalty_spares_punctuation_tokens():
    from tunelab.evaluate.decoding import OutputRepetitionPenalty

    pieces = FakeTokenizer({0: "a", 1: '":"', 2: "ab", 3: " 7"})
    penalty = OutputRepetitionPenalty(2.0, [[0]], pieces)
    scores = torch.full((1, 4), 4.0)
    for ids in ([0], [0, 1], [0, 1, 2], [0, 1, 2, 3]):  # one call per step, output 1, 2, 3
        out = penalty(torch.tensor([ids]), scores)
    assert out.tolist() == [[4.0, 4.0, 2.0, 2.0]]  # not '":"' (punctuation), not "a" (prompt)
