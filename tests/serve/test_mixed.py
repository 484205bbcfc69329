"""Mixed-adapter batches: rows of different runs (LoRA of two ranks, IA³, BitFit, prompt
tuning, p-tuning, the base) share one decoding forward, joining and leaving at different steps,
and each row decodes token for token what its run decodes alone; runs whose changes are not
per-row terms keep their own batches."""

from __future__ import annotations

import threading

import pytest
import torch

from tunelab.evaluate.generation import encode_prompts, generate
from tunelab.evaluate.modes import inference
from tunelab.serve import prepack, products
from tunelab.serve.adapters import BASE, AdapterSet
from tunelab.serve.batch import RunningBatch, Stats
from tunelab.serve.engine import Job, Scheduler, Wordlike
from tunelab.serve.mixed import Mixer, RowLinear, row_delta
from tunelab.serve.prefix import PrefixCache
from tunelab.serve.products import SIZES, Products

JOINING = ["lora_a", "lora_r2", "ia3", "bitfit", "prompt", "ptuning"]
APART = ["dora", "prefix", "adapter", "full", "ulmfit", "importance"]
PROMPTS = ["reverse: abc", "hi", "reverse: served", "hello there, friend", "x", "abcabc", "ok",
           "reverse: tunelab"]  # fmt: skip
OPTIONS = [  # greedy text of random models is otherwise "aaaa"
    {"no_repeat_ngram_size": 1},
    {"no_repeat_ngram_size": 2, "repetition_penalty": 1.3, "repetition_guard": 2,
     "output_repetition_penalty": 1.5, "min_new_tokens": 4},
]  # fmt: skip


@pytest.fixture(scope="module")
def served(method_runs, make_run, tmp_path_factory) -> AdapterSet:
    root = tmp_path_factory.mktemp("mixed")
    rank_two = make_run(root, "lora_r2", {"name": "lora", "r": 2}, 3e-2)
    runs = {name: method_runs[name] for name in JOINING + APART if name != "lora_r2"}
    served = AdapterSet.from_runs({**runs, "lora_r2": rank_two})
    return served


def model_of(served: AdapterSet, name: str):
    return served.base if name == BASE else served.runs[name].model


def test_which_runs_join_a_mixed_batch(served):
    mixer = Mixer(served.base)
    for name in JOINING:
        delta = row_delta(served.runs[name].model, served.runs[name].method, served.base)
        assert delta is not None and mixer.accept(delta), name
    for name in APART:
        assert row_delta(served.runs[name].model, served.runs[name].method, served.base) is None
    assert row_delta(served.runs["prompt"].model, "prompt", served.base).virtual is not None


@pytest.mark.parametrize(
    ("options", "variant"),
    [*((o, None) for o in [*OPTIONS, "alternating"]), ("alternating", "wide"),
     ("alternating", "packed")],
)  # fmt: skip
def test_mixed_rows_decode_what_each_run_decodes_alone(served, options, variant, monkeypatch):
    """Eight rows of seven runs (the first LoRA's two apart, so gathered by index) join one
    batch in three groups and leave at their own max_tokens; every row's text is its run's
    lone greedy text (also with rows of different decoding options in the batch, with every
    product of 4+ rows taken as W @ xᵀ, as the output layer of a real vocabulary is, and with
    every weight packed for MKL's small-batch product, the products `tunelab serve` may measure
    as the fastest on a CPU)."""
    if variant == "packed" and not prepack.available():
        pytest.skip("this torch has no MKL packed product (`prepack.available()` is False)")
    names = [BASE, *JOINING, "lora_a"]
    per_row = [OPTIONS[i % 2] if options == "alternating" else options for i in range(8)]
    lengths = [8, 8, 3, 5, 8, 7, 6, 8]
    mixer = Mixer(served.base, pack=variant == "packed")
    if variant == "wide":
        transposed = ("transposed",) * len(SIZES)
        mixer.plan.products = Products(SIZES, transposed, transposed)
    if variant == "packed":  # every Linear of the view takes its products from a pack
        linears = [m for m in mixer.model.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(type(m.packed) is torch.Tensor for m in mixer.model.modules()
                               if isinstance(m, RowLinear))  # fmt: skip
        assert all(any(r.linear is m for r in mixer.model.modules() if isinstance(r, RowLinear))
                   for m in linears)  # fmt: skip
        packed_products = []
        real = prepack.linear
        monkeypatch.setattr(prepack, "linear", lambda *a: packed_products.append(1) or real(*a))
    deltas = []
    for name in names:
        run = served.runs.get(name)
        delta = row_delta(run.model, run.method, served.base) if run else None
        assert delta is None or mixer.accept(delta)
        deltas.append(delta)
    ids = encode_prompts(served.tokenizer, PROMPTS)
    rows = zip(names, ids, lengths, per_row, strict=True)
    jobs = [Job(name, row, n, emit=lambda event: None, decoding=dict(settings))
            for name, row, n, settings in rows]  # fmt: skip
    stats = Stats()
    batch = RunningBatch(mixer.model, served.tokenizer, Wordlike(served.tokenizer), stats, mixer)
    with inference(mixer.model):
        batch.join(jobs[:3], deltas[:3])
        batch.step()
        batch.step()
        batch.join(jobs[3:6], deltas[3:6])
        batch.step()
        batch.join(jobs[6:], deltas[6:])
        while len(batch):
            batch.step()
    assert stats.steps < sum(lengths) // 2  # rows shared forwards
    assert stats.summary()["mean_runs_per_step"] > 3  # of different runs
    if variant == "packed":
        assert packed_products  # the steps of 4 to 8 rows
    for job, name, prompt, length in zip(jobs, names, PROMPTS, lengths, strict=True):
        alone = generate(model_of(served, name), served.tokenizer, [prompt],
                         max_new_tokens=length, batch_size=1, **job.decoding)  # fmt: skip
        assert job.finish_reason in ("stop", "length")
        text = served.tokenizer.decode(job.tokens, skip_special_tokens=True).strip()
        assert text == alone[0], (name, prompt, job.decoding)


def test_every_kind_of_product_equals_f_linear_and_the_head_is_a_row_linear(served):
    """Each way `products.product` takes a product gives F.linear's values (to float32
    rounding) at every row count, with and without a bias; every Linear of the mixer's view is
    a RowLinear over the base's very weight, the output layer marked as the head."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 24, generator=generator)
    bias = torch.randn(40, generator=generator)
    packed = prepack.pack(weight)
    for rows in range(1, 18):
        x = torch.randn(rows, 1, 24, generator=generator)
        for kind in products.KINDS:
            for b in (None, bias):
                got = products.product(x, weight, b, packed, kind)
                want = torch.nn.functional.linear(x, weight, b)
                assert got.shape == want.shape
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    mixer = Mixer(served.base)
    head = mixer.model.get_output_embeddings()
    assert type(head) is RowLinear and head.head
    assert head.weight is served.base.get_output_embeddings().weight
    rows = [m for m in mixer.model.modules() if isinstance(m, RowLinear)]
    base = [m for m in served.base.modules() if type(m) is torch.nn.Linear]
    assert sorted(id(r.linear.weight) for r in rows) == sorted(id(m.weight) for m in base)
    assert [r for r in rows if r.head] == [head]


def test_scheduler_puts_joining_runs_in_one_batch_and_others_in_their_own(served):
    names = [BASE, *JOINING, "dora"]
    options = {"no_repeat_ngram_size": 1}
    scheduler = Scheduler(served, max_batch=8, window=0.5)
    ids = encode_prompts(served.tokenizer, PROMPTS)
    done = threading.Semaphore(0)

    def emit(event: dict) -> None:
        if "done" in event:
            done.release()

    jobs = [Job(name, row, 6, emit=emit, decoding=dict(options))
            for name, row in zip(names, ids, strict=True)]  # fmt: skip
    try:
        for job in jobs:
            scheduler.submit(job)
        for _ in jobs:
            assert done.acquire(timeout=60)
    finally:
        scheduler.close()
    batches = sorted(scheduler.history)
    mixed = "+".join(sorted([BASE, *JOINING]))
    assert [(adapters, len(reasons)) for adapters, reasons in batches] == sorted(
        [("dora", 1), (mixed, 7)]
    )
    assert scheduler.stats.prefills == 2  # one prefill each: the seven started together
    for job, name, prompt in zip(jobs, names, PROMPTS, strict=True):
        alone = generate(model_of(served, name), served.tokenizer, [prompt], max_new_tokens=6,
                         batch_size=1, **options)  # fmt: skip
        text = served.tokenizer.decode(job.tokens, skip_special_tokens=True).strip()
        assert text == alone[0], name


@pytest.mark.parametrize("cached", [False, True])
def test_prompts_folded_into_a_step_decode_what_each_run_decodes_alone(served, cached):
    """Joiners of seven runs folded into the running batch's decoding step (one forward of
    one-token rows, tunelab.serve.fold), prompt-tuning and p-tuning rows (virtual embeddings
    first) among them, with and without cached prompt prefixes (of different lengths, and none
    for some joiners of the same fold; the second prompt-tuning row's covers its virtual
    tokens): every row's text is its run's lone greedy text."""
    names = [BASE, "lora_a", "lora_r2", "prompt", "bitfit", "ptuning", "prompt", "ia3"]
    prompts = [f"reverse: the words {word}" for word in
               ["abc", "served", "tunelab", "x", "hello there", "ok", "abcabc", "hi"]]  # fmt: skip
    lengths = [8, 7, 3, 8, 6, 8, 5, 8]
    options = {"no_repeat_ngram_size": 1}
    mixer, of_run = Mixer(served.base), {BASE: None}
    for name in set(names) - {BASE}:  # one delta per run, as the engine keeps them
        run = served.runs[name]
        of_run[name] = row_delta(run.model, run.method, served.base)
        assert mixer.accept(of_run[name])
    deltas = [of_run[name] for name in names]
    ids = encode_prompts(served.tokenizer, prompts)
    jobs = [Job(name, row, n, emit=lambda event: None, decoding=dict(options))
            for name, row, n in zip(names, ids, lengths, strict=True)]  # fmt: skip
    stats = Stats()
    prefixes = PrefixCache() if cached else None
    batch = RunningBatch(mixer.model, served.tokenizer, Wordlike(served.tokenizer), stats, mixer,
                         prefixes)  # fmt: skip
    with inference(mixer.model):
        batch.join(jobs[:2], deltas[:2])
        batch.step()
        assert batch.can_fold()
        batch.fold(jobs[2:5], deltas[2:5])
        batch.step()
        batch.fold(jobs[5:], deltas[5:])
        while len(batch):
            batch.step()
    assert stats.folds == 2 and (stats.prefix_hits > 0) == cached
    for job, name, prompt, length in zip(jobs, names, prompts, lengths, strict=True):
        alone = generate(model_of(served, name), served.tokenizer, [prompt],
                         max_new_tokens=length, batch_size=1, **options)  # fmt: skip
        text = served.tokenizer.decode(job.tokens, skip_special_tokens=True).strip()
        assert text == alone[0], (name, prompt)


def test_a_fold_gives_the_logits_of_a_step_and_a_prefill(served, monkeypatch):
    """The folded forward's logits equal, to float32 rounding, those of a decoding step of the
    running rows followed by a separate prefill of the joiners (cached prefix in front for two,
    virtual tokens for one), and so do the next step's (the joiners' cache and positions)."""
    names, joining = [BASE, "lora_a", "ia3", "prompt"], ["ia3", "prompt", "lora_a", "ptuning"]
    of_run = {BASE: None}
    mixer = Mixer(served.base)
    for name in {*names, *joining} - {BASE}:
        run = served.runs[name]
        of_run[name] = row_delta(run.model, run.method, served.base)
        assert mixer.accept(of_run[name])
    words = ["abc", "served", "x", "zz", "tunelab", "hi", "hello", "ok"]
    prompts = [f"reverse: the words {word}" for word in words]
    ids = encode_prompts(served.tokenizer, prompts)
    seen: list[torch.Tensor] = []
    take = RunningBatch._take
    monkeypatch.setattr(RunningBatch, "_take",
                        lambda self, logits, start: seen.append(logits.clone())
                        or take(self, logits, start))  # fmt: skip

    def batch_and_jobs():
        jobs = [Job(name, row, 20, emit=lambda event: None, decoding={"min_new_tokens": 20})
                for name, row in zip([*names, *joining], ids, strict=True)]  # fmt: skip
        batch = RunningBatch(mixer.model, served.tokenizer, Wordlike(served.tokenizer), Stats(),
                             mixer, PrefixCache())  # fmt: skip
        with inference(mixer.model):
            batch.join(jobs[:4], [of_run[name] for name in names])
            batch.step()
        return batch, jobs[4:]

    folded, new = batch_and_jobs()
    with inference(mixer.model):
        folded.fold(new, [of_run[name] for name in joining])
        folded.step()
    together, after = seen[-2:]
    apart, new = batch_and_jobs()
    with inference(mixer.model):
        apart.step()
        apart.join(new, [of_run[name] for name in joining])
        apart.step()
    assert folded.stats.folds == 1
    assert folded.stats.prefix_hits == 3  # all but p-tuning's (the prompt row's: virtual too)
    virtual = len(of_run["prompt"].virtual)  # its cached prefix covers them and more:
    assert folded._match(new[1].prompt_ids, of_run["prompt"])[0] > virtual
    torch.testing.assert_close(together, torch.cat([seen[-3], seen[-2]]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after, seen[-1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["dora", "adapter", "full"])
def test_own_view_batches_fold_joiners_and_decode_what_the_run_decodes_alone(served, name):
    """A run that keeps a batch of its own view (no mixed batch) folds its joiners into its
    decoding step too, on its own cached prompt prefix: every row decodes its lone text."""
    model = served.runs[name].model
    prompts = [f"reverse: the words {word}" for word in ["abc", "served", "x", "hello there"]]
    lengths, options = [6, 4, 7, 5], {"no_repeat_ngram_size": 1}
    ids = encode_prompts(served.tokenizer, prompts)
    jobs = [Job(name, row, n, emit=lambda event: None, decoding=dict(options))
            for row, n in zip(ids, lengths, strict=True)]  # fmt: skip
    stats = Stats()
    batch = RunningBatch(model, served.tokenizer, Wordlike(served.tokenizer), stats, None,
                         PrefixCache())  # fmt: skip
    with inference(model):
        batch.join(jobs[:2])
        batch.step()
        assert batch.can_fold()
        batch.fold(jobs[2:])
        while len(batch):
            batch.step()
    assert stats.folds == 1 and stats.prefix_hits == 2
    for job, prompt, length in zip(jobs, prompts, lengths, strict=True):
        alone = generate(model, served.tokenizer, [prompt], max_new_tokens=length, batch_size=1,
                         **options)  # fmt: skip
        text = served.tokenizer.decode(job.tokens, skip_special_tokens=True).strip()
        assert text == alone[0], prompt
