"""Continuous batching: rows joining and leaving a running batch decode exactly what each prompt
decodes alone through `generate`; the per-row guards compute what the offline processors
compute; the scheduler forms full batches and spends no forward on finished rows."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import replace

import pytest
import torch
from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

from tunelab.evaluate.decoding import NewNGramGuard, OutputRepetitionPenalty
from tunelab.evaluate.generation import encode_prompts, generate
from tunelab.evaluate.modes import inference
from tunelab.models.tiny import byte_tokenizer
from tunelab.serve.adapters import AdapterSet
from tunelab.serve.batch import RunningBatch, Stats, continuous_ok
from tunelab.serve.engine import Job, Scheduler, Wordlike
from tunelab.serve.rowguards import GuardOptions, RowGuards

PROMPTS = ["reverse: abc", "hi", "reverse: served", "hello there, friend", "x", "abcabc"]
OPTIONS = [  # decoding option sets; greedy text of random models is otherwise "aaaa"
    {"no_repeat_ngram_size": 1},
    {"no_repeat_ngram_size": 2, "repetition_penalty": 1.3},
    {"repetition_guard": 2, "output_repetition_penalty": 1.5, "min_new_tokens": 6},
    {"stop_at_newline": True, "repetition_guard": 3},
]


@pytest.fixture(scope="module")
def served() -> AdapterSet:
    return AdapterSet("random:llama")


def offline_scores(options: GuardOptions, prompt: list[int], output: list[int], scores, tok):
    """What the offline processors make of one row's scores (the row decoded alone)."""
    ids = torch.tensor([prompt + output])
    if options.repetition_penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(options.repetition_penalty)(ids, scores)
    if options.no_repeat_ngram_size:
        scores = NoRepeatNGramLogitsProcessor(options.no_repeat_ngram_size)(ids, scores)
    if options.repetition_guard:
        guard = NewNGramGuard(options.repetition_guard, [prompt])
        guard.steps = len(output)
        scores = guard(ids, scores)
    if options.output_repetition_penalty != 1.0:
        penalty = OutputRepetitionPenalty(options.output_repetition_penalty, [prompt], tok)
        penalty.steps = len(output)
        scores = penalty(ids, scores)
    return scores


@pytest.mark.parametrize("seed", range(3))
def test_row_guards_compute_what_the_offline_processors_compute(seed):
    """Random rows over 12 tokens (so n-grams repeat; punctuation and letters, so that the
    output penalty has word tokens to act on), each with its own options, joining at random
    steps."""
    pick = random.Random(seed)
    tok = byte_tokenizer()
    vocab, drawn = 72, range(60, 72)  # the byte tokenizer's "]^_`abcdefgh"
    penalised = 0  # scores the output penalty changed (it must have acted)

    def draw() -> GuardOptions:
        return GuardOptions(
            repetition_penalty=pick.choice([1.0, 1.4, 1.2]),
            no_repeat_ngram_size=pick.choice([0, 1, 2, 3]), repetition_guard=pick.choice([0, 2, 3]),
            output_repetition_penalty=pick.choice([1.7, 1.3] if not options else [1.0, 1.7, 1.3]),
        )  # fmt: skip

    guards = RowGuards(GuardOptions(), vocab, [0], Wordlike(tok))
    prompts, outputs, options = [], [], []
    for _ in range(30):
        if len(prompts) < 5 and pick.random() < 0.4:  # a row joins
            prompts.append([pick.choice(drawn) for _ in range(pick.randrange(1, 7))])
            outputs.append([])
            options.append(draw())
            guards.add(prompts[-1:], options=options[-1:])
        if prompts and pick.random() < 0.2:  # a row leaves
            gone = pick.randrange(len(prompts))
            keep = [i for i in range(len(prompts)) if i != gone]
            prompts, outputs = [prompts[i] for i in keep], [outputs[i] for i in keep]
            options = [options[i] for i in keep]
            guards.keep(keep)
        if not prompts:
            continue
        scores = torch.randn(len(prompts), vocab)
        got = guards.apply(scores.clone())
        for row, (prompt, output) in enumerate(zip(prompts, outputs, strict=True)):
            want = offline_scores(options[row], prompt, output, scores[row : row + 1].clone(), tok)
            assert torch.equal(got[row : row + 1], want), (options[row], prompt, output)
            if options[row].output_repetition_penalty != 1.0:
                alone = replace(options[row], output_repetition_penalty=1.0)
                before = offline_scores(alone, prompt, output, scores[row : row + 1].clone(), tok)
                penalised += int((before != want).sum())
        tokens = [pick.choice(drawn) for _ in prompts]
        guards.observe(tokens)
        for output, token in zip(outputs, tokens, strict=True):
            output.append(token)
    assert penalised > 0


def decode_staggered(served: AdapterSet, prompts: list[str], options: dict, lengths: list[int]):
    """Each prompt's text from one running batch that rows join at different steps."""
    ids = encode_prompts(served.tokenizer, prompts)
    jobs = [Job("base", row, n, emit=lambda event: None, decoding=dict(options))
            for row, n in zip(ids, lengths, strict=True)]  # fmt: skip
    stats = Stats()
    batch = RunningBatch(served.base, served.tokenizer, Wordlike(served.tokenizer), stats)
    with inference(served.base):
        batch.join(jobs[:2])
        batch.step()
        batch.step()
        batch.join(jobs[2:5])
        batch.step()
        batch.join(jobs[5:])
        while len(batch):
            batch.step()
    return jobs, stats


@pytest.mark.parametrize("options", OPTIONS)
def test_rows_joining_a_running_batch_decode_what_they_decode_alone(served, options):
    lengths = [8, 3, 8, 5, 8, 7]
    jobs, stats = decode_staggered(served, PROMPTS, options, lengths)
    generated = 0  # tokens chosen: the kept ones, plus the EOS of rows that ended on one
    for job, prompt, length in zip(jobs, PROMPTS, lengths, strict=True):
        alone = generate(served.base, served.tokenizer, [prompt], max_new_tokens=length,
                         batch_size=1, **options)  # fmt: skip
        assert job.finish_reason in ("stop", "length")
        raw = served.tokenizer.decode(job.tokens, skip_special_tokens=True).lstrip()
        generated += len(job.tokens) + (job.finish_reason == "stop" and "\n" not in raw)
        text = raw.strip()
        if options.get("stop_at_newline"):
            text = text.split("\n", 1)[0].strip()
        assert text == alone[0], (prompt, options)
    # no forward decodes a finished row: each row was in exactly (its tokens - 1) steps
    assert stats.step_rows == generated - len(jobs)  # each row's first token: its prefill
    assert stats.prefills == 3 and stats.prefill_rows == len(PROMPTS)


def test_continuous_path_only_where_it_matches_generate(served):
    assert continuous_ok(served.base, {"no_repeat_ngram_size": 3, "stop_at_newline": True})
    assert not continuous_ok(served.base, {"do_sample": True, "temperature": 0.7})
    assert not continuous_ok(served.base, {"typical_p": 0.5})  # an option it does not apply
    sliding = AdapterSet("random:mistral")  # sliding-window cache layers
    assert not continuous_ok(sliding.base, {})


def test_scheduler_fills_one_batch_and_rows_leave_when_done(served):
    """Six requests arriving within the window start as one batch of six; rows leave at their
    own max_tokens, so the decoding forwards hold 6, then fewer rows."""
    scheduler = Scheduler(served, max_batch=8, window=0.5)
    finished, all_done = [], threading.Event()
    lengths = [2, 3, 4, 5, 6, 7]
    ids = encode_prompts(served.tokenizer, PROMPTS)

    def emit(event: dict) -> None:  # called on the worker thread: must not block
        if "done" in event:
            finished.append(event)
            if len(finished) == len(lengths):
                all_done.set()

    options = {"no_repeat_ngram_size": 1, "min_new_tokens": 7}  # no EOS: every row runs out
    jobs = [Job("base", row, n, emit=emit, decoding=dict(options))
            for row, n in zip(ids, lengths, strict=True)]  # fmt: skip
    started = time.perf_counter()
    try:
        for job in jobs:
            scheduler.submit(job)
        assert all_done.wait(30)
    finally:
        scheduler.close()
    elapsed = time.perf_counter() - started
    stats = scheduler.stats.summary()
    assert (stats["prefills"], stats["prefill_rows"], stats["finished"]) == (1, 6, 6)
    # the worker's time: waiting for the jobs (and the batch window), one prefill, the steps
    assert stats["idle_s"] > 0 and stats["classic_s"] < 0.01
    assert 0 < stats["prefill_s"] and 0 < stats["step_s"]
    assert stats["prefill_s"] + stats["step_s"] < elapsed
    assert [len(job.tokens) for job in jobs] == lengths
    assert stats["steps"] == max(lengths) - 1
    assert stats["step_rows"] == sum(n - 1 for n in lengths)
    assert list(scheduler.history) == [("base", ["length"] * 6)]


def test_a_lone_joiner_of_a_half_full_batch_waits_a_few_steps_for_a_second(served):
    """A fold costs about as much for two joiners as for one: a job alone in waiting for a
    running batch of at least max_batch / 2 rows is held up to `fold_wait` mean steps; two
    waiting jobs, a smaller batch or fold_wait 0 admit it at once."""
    scheduler = Scheduler(served, max_batch=8, window=0.0, fold_wait=2.5)
    ids = encode_prompts(served.tokenizer, PROMPTS)

    def job(index: int) -> Job:
        decoding = {"no_repeat_ngram_size": 1}
        return Job("base", ids[index % len(ids)], 3, emit=lambda event: None, decoding=decoding)

    try:
        with scheduler.condition:  # the worker sleeps until notified: nothing moves meanwhile
            running = [job(index) for index in range(4)]
            slot = scheduler._slot(running[0], served.base)
            scheduler._join(slot, running)
            scheduler.running.extend(running)  # cancelled by close()
            batch = scheduler.batches[slot]
            assert len(batch) == 4 and batch.can_fold()
            scheduler.stats.steps, scheduler.stats.step_s = 10, 1.0  # a mean step of 0.1 s

            def admitted(*jobs: Job) -> list[Job]:
                scheduler.pending.extend(jobs)
                joining, classic = scheduler._admit()
                assert classic == []
                return joining.get(slot, [])

            lone = job(4)
            assert admitted(lone) == [] and list(scheduler.pending) == [lone]  # held
            scheduler.fold_wait = 0.0
            assert admitted() == [lone] and not scheduler.pending
            scheduler.fold_wait = 2.5
            late = job(5)
            assert admitted(late) == []
            late.arrived -= 0.3  # three mean steps ago: past fold_wait
            assert admitted() == [late]
            pair = [job(0), job(1)]
            assert admitted(*pair) == pair  # a second joiner: both at once
            batch._keep([0, 1, 2])  # under half full: at once
            alone = job(2)
            assert admitted(alone) == [alone]
    finally:
        scheduler.close()
