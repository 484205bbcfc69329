"""The prompt-prefix KV cache: a prefill on a cached prefix computes the logits of the whole
prefill, rows keep the tokens each run decodes alone, and a run's rows never take another
view's keys and values."""

from __future__ import annotations

import threading

import pytest
import torch

from tunelab.evaluate.generation import encode_prompts, generate
from tunelab.evaluate.modes import inference
from tunelab.serve.adapters import BASE, AdapterSet
from tunelab.serve.batch import RunningBatch, Stats
from tunelab.serve.engine import Job, Scheduler, Wordlike
from tunelab.serve.mixed import Mixer, row_delta
from tunelab.serve.prefix import PrefixCache, common_prefix

SYSTEM = "system: answer with one word only.\nuser: "
PROMPTS = [SYSTEM + text for text in ["reverse: abc", "hi", "reverse: served", "hello", "x", "ok"]]
NAMES = [BASE, "lora_a", "ia3", "bitfit", "lora_a", "prompt"]
OPTIONS = {"no_repeat_ngram_size": 1}  # greedy text of random models is otherwise "aaaa"


@pytest.fixture(scope="module")
def served(method_runs) -> AdapterSet:
    return AdapterSet.from_runs({name: method_runs[name] for name in ("lora_a", "ia3", "bitfit",
                                                                     "prompt")})  # fmt: skip


def mixed_batch(served, prefixes):
    mixer = Mixer(served.base)
    deltas = {BASE: None}
    for name, run in served.runs.items():
        deltas[name] = row_delta(run.model, run.method, served.base)
        assert mixer.accept(deltas[name])
    batch = RunningBatch(mixer.model, served.tokenizer, Wordlike(served.tokenizer), Stats(),
                         mixer, prefixes)  # fmt: skip
    return batch, deltas


def jobs_for(served, names, prompts, length=6):
    ids = encode_prompts(served.tokenizer, prompts)
    return [Job(name, row, length, emit=lambda event: None, decoding=dict(OPTIONS))
            for name, row in zip(names, ids, strict=True)]  # fmt: skip


def test_prefill_on_a_cached_prefix_is_the_whole_prefill(served):
    """Base, LoRA, IA³, BitFit and prompt-tuning rows: warmed by other prompts of the same
    views, the next prefill takes the shared prefix (a prompt-tuning row's virtual tokens
    included) from the cache, its logits match the whole prefill's and every row decodes what
    its run decodes alone."""
    cached, deltas = mixed_batch(served, PrefixCache())
    plain, _ = mixed_batch(served, None)
    rows = [deltas[name] for name in NAMES]
    warming = [BASE, "lora_a", "ia3", "bitfit", "prompt"]
    warm = jobs_for(served, warming, [SYSTEM + "warm up", SYSTEM + "w", SYSTEM + "?", SYSTEM,
                                      SYSTEM + "hello there"])  # fmt: skip
    jobs = jobs_for(served, NAMES, PROMPTS)
    prompts = [job.prompt_ids for job in jobs]
    with inference(cached.model):
        cached.join(warm, [deltas[name] for name in warming])
        assert cached.stats.prefix_hits == 0
        _, _, expected = plain._prefill(prompts, rows)
        _, _, logits = cached._prefill(prompts, rows)
        assert cached.stats.prefix_hits == len(jobs)
        shared = common_prefix(prompts[0], prompts[1], 10**6)
        assert cached.stats.prefix_tokens >= len(jobs) * (shared - 1) > 0
        assert cached._match(prompts[-1], rows[-1])[0] > len(deltas["prompt"].virtual) + 4
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(logits.argmax(-1), expected.argmax(-1))
        cached.join(jobs, rows)
        while len(cached):
            cached.step()
    for job, name, prompt in zip(jobs, NAMES, PROMPTS, strict=True):
        model = served.base if name == BASE else served.runs[name].model
        alone = generate(model, served.tokenizer, [prompt], max_new_tokens=6, batch_size=1,
                         **OPTIONS)  # fmt: skip
        text = served.tokenizer.decode(job.tokens, skip_special_tokens=True).strip()
        assert text == alone[0], name


def test_views_do_not_share_the_cache(served):
    batch, deltas = mixed_batch(served, PrefixCache())
    with inference(batch.model):
        batch.join(jobs_for(served, [BASE], [SYSTEM + "one"]), [None])
        batch.join(jobs_for(served, ["lora_a"], [SYSTEM + "two"]), [deltas["lora_a"]])
        assert batch.stats.prefix_hits == 0  # LoRA's keys are not the base's
        batch.join(jobs_for(served, [BASE, "prompt"], [SYSTEM + "3", SYSTEM + "4"]),
                   [None, deltas["prompt"]])  # fmt: skip
        assert batch.stats.prefix_hits == 0  # the prompt-tuning run's first prompt
        batch.join(jobs_for(served, [BASE, "lora_a"], [SYSTEM + "5", SYSTEM + "6"]),
                   [None, deltas["lora_a"]])  # fmt: skip
        assert batch.stats.prefix_hits == 2


def test_prefix_cache_is_bounded_least_recently_used_first():
    cache, model = PrefixCache(size=3, per_view=2, min_tokens=2), torch.nn.Linear(1, 1)
    kv = [torch.zeros(1, 1, 4, 2)]
    for view, prompt in [(1, [1, 2, 3, 4]), (1, [1, 2, 3, 5]), (1, [1, 2, 9, 9])]:
        cache.store(model, view, prompt, kv, kv)
    assert [tokens for _, tokens in cache.entries] == [(1, 2, 3, 5), (1, 2, 9, 9)]
    assert cache.match(model, 1, [1, 2, 3, 5, 7])[0] == 4
    assert cache.match(model, 1, [1, 2, 3, 5])[0] == 3  # the last token is computed
    assert cache.match(model, 2, [1, 2, 3, 5, 7]) == (0, None)
    assert cache.match(model, 1, [1, 7]) == (0, None)  # below min_tokens
    cache.store(model, 2, [4, 4, 4], kv, kv)
    cache.store(model, 3, [5, 5, 5], kv, kv)
    assert len(cache.entries) == 3 and (1, (1, 2, 9, 9)) not in cache.entries


def test_scheduler_counts_prefix_hits(served):
    scheduler = Scheduler(served, max_batch=8, window=0.0)
    done = threading.Semaphore(0)

    def emit(event: dict) -> None:
        if "done" in event:
            done.release()

    try:
        for prompt in PROMPTS[:2]:  # one after the other: the second finds the first's prefix
            (job,) = jobs_for(served, ["lora_a"], [prompt])
            job.emit = emit
            scheduler.submit(job)
            assert done.acquire(timeout=60)
    finally:
        scheduler.close()
    assert scheduler.stats.summary()["prefix_hits"] == 1
