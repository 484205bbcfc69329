"""The serving engine: one worker thread owns the model; requests wait in a bounded queue.

Why one thread: the views of an `AdapterSet` share the base's tensors and torch already uses
every core for one forward pass, so running two generations at once only makes both slower.
(And it should be the process's only thread that ran torch's parallel work: load the adapters
with `tunelab.serve.threads.apart`, as `tunelab serve` does, or every step runs at half speed.)
Requests are instead *batched*, continuously, into `RunningBatch`es (`tunelab.serve.batch`):

- greedy jobs of every run whose changes a shared base forward can apply per row (LoRA, IA³,
  BitFit's added biases, prompt tuning and p-tuning, the base: `tunelab.serve.mixed`) share ONE
  mixed batch, whatever their run and their decoding options (the guards are per row);
- greedy jobs of any other run (DoRA, prefix, bottleneck adapters, full, ULMFiT, importance)
  share a batch of that run's view;
- the rest (sampling, sliding-window caches, options the running batch does not apply, prefix
  tuning's KV prefix) are decoded by `generate`, one batch of one key at a time.

Between two decoding steps the worker admits waiting jobs, oldest first: a job joins its batch
while that has fewer than `max_batch` rows, or starts one. Joiners of a running batch are
folded into its next step (one forward: `RunningBatch.fold`) where the model allows; a fold
costs about as much for two joiners as for one, so a lone joiner of a batch holding at least half
its rows waits up to `fold_wait` (2.5) mean steps for a second one (`_hold`). Rows leave
the batch the step they finish, so no forward is spent on them. Running batches take one step
each in turn. An idle worker that is handed a first job waits up to `window` seconds (default
10 ms) for more of its batch, so that requests sent together start together.

Greedy decoding runs through the running batch's own loop, which computes what offline
`generate` computes for each row alone (tests compare them token for token). Jobs that loop
does not cover — sampling (seeded draws come from `generate`'s sampler), prefix tuning,
sliding-window caches — are decoded as before: a left-padded batch of one key through
the very function offline generation uses (`tunelab.evaluate.generation`), followed token by
token by a stopping criterion, the worker busy until that batch ends.

Each job hands deltas of its text to its `emit` callback (thread-safe, never blocking: a slow
client cannot stall the worker), applies stop strings and its own `max_tokens`, and ends when
its client went away (`cancelled`). `stats` counts forwards and rows per forward, and the
worker's wall seconds in steps, prefills, `generate` batches and waiting, and holds which
product each row count of the mixed view takes (measured on the machine when the mixed view is
built: `Mixer.measure`); `/tunelab/stats` serves it.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from tunelab.evaluate.generation import stop_token_ids
from tunelab.serve.adapters import BASE, AdapterSet
from tunelab.serve.batch import RunningBatch, Stats, continuous_ok, decoding_ok
from tunelab.serve.jobs import Job, decode
from tunelab.serve.mixed import Mixer, RowDelta, row_delta
from tunelab.serve.prefix import PrefixCache
from tunelab.serve.prepack import FEW, available
from tunelab.serve.threads import apart

log = logging.getLogger(__name__)
NO_DELTA = RowDelta()  # the base's rows in a mixed batch


class QueueFull(Exception):
    """More jobs waiting or running than the server accepts."""


class Closed(Exception):
    """The server is shutting down."""


class Scheduler:
    """A bounded queue of jobs and the one worker thread that batches and decodes them."""

    def __init__(
        self, adapters: AdapterSet, *, max_batch: int = 8, max_queue: int = 64,
        window: float = 0.01, mix: bool = True, prepack: bool = True, fold_wait: float = 2.5,
        measure: bool = True,
    ) -> None:  # fmt: skip
        self.adapters, self.max_batch, self.max_queue = adapters, max_batch, max_queue
        self.mix = mix  # False: every run decodes in batches of its own (for comparisons)
        # the mixed view's weights packed for MKL's small-batch product (`serve.prepack`)
        self.prepack = prepack and max_batch >= FEW and available()
        self.measure = measure  # time the ways of taking products at start (`serve.products`)
        self.measured = None  # that measurement, taken again by a later base's mixed view
        self.window = window  # seconds an idle worker waits for a batch to fill
        self.fold_wait = fold_wait  # steps a lone joiner of a half-full batch waits for a second
        self.pending: deque[Job] = deque()
        self.running: list[Job] = []
        self.batches: dict[tuple, RunningBatch] = {}  # slot (see `_slot`) -> running batch
        self.continuous: dict[tuple, tuple] = {}  # (key, id(model)) -> (model ref, kind, delta)
        self.mixer: Mixer | None = None  # the view of the base that mixed batches run on
        self.stop_ids: list[int] = []
        self.turn = 0  # round robin over running batches, one step each
        self.folded: set[tuple] = set()  # slots whose step this turn was a fold
        self.stats = Stats()
        self.prefixes = PrefixCache()  # prompt-prefix K/V shared by the running batches
        self.wordlike = Wordlike(adapters.tokenizer)
        self.condition = threading.Condition()
        self.closed = False
        self.history: deque[tuple[str, list[str | None]]] = deque(maxlen=100)  # ended batches:
        # (adapter, each job's finish reason), for tests and the benchmark
        if mix:  # packing the weights takes a moment: at start, not at a request; and
            apart(self._mixer)  # apart: the worker's OpenMP pool is to be the only one
        self.thread = threading.Thread(target=self._work, name="tunelab-serve", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue `job`; raises QueueFull or Closed instead of waiting."""
        with self.condition:
            if self.closed:
                raise Closed("the server is shutting down")
            if len(self.pending) + len(self.running) >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are already waiting or running")
            self.pending.append(job)
            self.condition.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new jobs, end waiting ones with 503, cancel running ones, stop the worker."""
        with self.condition:
            self.closed = True
            for job in self.pending:
                job.emit({"error": "the server is shutting down", "status": 503})
            self.pending.clear()
            for job in self.running:
                job.cancelled.set()
            self.condition.notify_all()
        self.thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self.condition:
                with self._timed("idle_s"):
                    self._wait_for_work()
                if self.closed and not self.batches:
                    return
                joining, classic = self._admit()
                self.running.extend(job for group in (*joining.values(), *classic) for job in group)
            try:
                with self._timed("prefill_s"):
                    for slot, jobs in joining.items():
                        self._join(slot, jobs)
                with self._timed("classic_s"):
                    for jobs in classic:
                        self._classic(jobs)
                with self._timed("step_s"):
                    self._step()
            except Exception as error:  # a bug must not kill the worker: report and go on
                log.exception("generation failed")
                for job in self.running:
                    if job.finish_reason is None:
                        job.emit({"error": f"generation failed: {error}", "status": 500})
                        job.finish_reason = "error"
                self.batches.clear()
            finally:
                self.folded.clear()
                self._forget_finished()

    @contextmanager
    def _timed(self, field: str) -> Iterator[None]:
        """Add the block's wall seconds to `stats.<field>`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self.stats, field, getattr(self.stats, field) + time.perf_counter() - start)

    def _wait_for_work(self) -> None:
        """Block while there is nothing to do; an idle worker given a first job waits up to
        `window` seconds for more of its kind, so that they start as one batch."""
        while not self.pending and not self.batches and not self.closed:
            self.condition.wait()
        if self.batches or self.closed or not self.window:
            return
        deadline = self.pending[0].arrived + self.window
        while not self.closed and time.monotonic() < deadline:
            slots = [self._slot(job, self._model(job)) for job in self.pending
                     if self._model(job) is not None]  # fmt: skip
            if slots and slots.count(slots[0]) >= self.max_batch:
                return
            self.condition.wait(deadline - time.monotonic())

    def _admit(self) -> tuple[dict[tuple, list[Job]], list[list[Job]]]:
        """Take waiting jobs, oldest first: ({batch slot: jobs joining it}, [classic batches]).
        A job joins its slot's running batch (or starts one) while that has room; jobs that
        `generate` must decode form batches of one key, as before."""
        joining: dict[tuple, list[Job]] = {}
        classic: dict[tuple, list[Job]] = {}
        slots = {}  # each live job's slot, found once a turn
        for job in self.pending:
            model = None if job.cancelled.is_set() else self._model(job)
            if model is not None:
                slots[id(job)] = self._slot(job, model)
        waiting, now = Counter(slots.values()), time.monotonic()
        for job in list(self.pending):
            if job.cancelled.is_set():
                self.pending.remove(job)
                continue
            slot = slots.get(id(job))
            if slot is None:
                self.pending.remove(job)
                job.emit({"error": f"the model {job.adapter!r} was unloaded", "status": 404})
                continue
            if waiting.get(slot) == 1 and self._hold(slot, job, now):
                continue
            if slot[0] != "classic":
                running = len(self.batches[slot]) if slot in self.batches else 0
                group = joining.setdefault(slot, [])
            else:
                running, group = 0, classic.setdefault(slot, [])
            if running + len(group) < self.max_batch:
                group.append(job)
                self.pending.remove(job)
        return {slot: jobs for slot, jobs in joining.items() if jobs}, list(classic.values())

    def _hold(self, slot: tuple, job: Job, now: float) -> bool:
        """True to keep `job`, the only one waiting for its running batch, back this turn.

        A fold costs about what a step costs plus one jump, the same for one prompt or two (on
        SmolLM2-135M, 2 CPU cores: a 7-row step ~110 ms, with one 16-token joiner ~205 ms, with
        two ~205 ms), so while the batch holds at least half its rows a lone joiner waits up to
        `fold_wait` mean steps for a second one to fold with; the batch decodes meanwhile."""
        batch = self.batches.get(slot)
        if not self.fold_wait or batch is None or not batch.can_fold():
            return False
        step = self.stats.step_s / self.stats.steps if self.stats.steps else 0.0
        return 2 * len(batch) >= self.max_batch and now - job.arrived < self.fold_wait * step

    def _slot(self, job: Job, model) -> tuple:
        """Where `job` decodes: ("mixed", mixer) — the one running batch every run with a row
        delta shares (base included) —, ("own", run, model) — a running batch of its run's view
        — or ("classic", key, model) — a `generate` batch of one key."""
        own = (job.key(), id(model))
        known = self.continuous.get(own)
        if known is None or known[0]() is not model:  # (an id can be reused after unload)
            mixable = self.mix and decoding_ok(model, job.decoding)
            delta = self._delta(model) if mixable else None
            if delta is not None:
                kind = "mixed"
            elif continuous_ok(model, job.decoding):
                kind = "own"
            else:
                kind = "classic"
            known = self.continuous[own] = (weakref.ref(model), kind, delta)
        job.delta = None if known[2] is NO_DELTA else known[2]
        if known[1] == "mixed":
            return "mixed", id(self.mixer)
        if known[1] == "own":  # greedy: rows of other decoding options share the batch
            return "own", job.adapter, id(model)
        return "classic", *own

    def _delta(self, model):
        """The run's `RowDelta` (NO_DELTA for the base), or None when it cannot join a mixed
        batch."""
        mixer = self._mixer()
        if model is self.adapters.base:
            return NO_DELTA
        served = next((s for s in self.adapters.runs.values() if s.model is model), None)
        if served is None or stop_token_ids(model, self.adapters.tokenizer) != self.stop_ids:
            return None
        delta = row_delta(model, served.method, self.adapters.base)
        return delta if delta is not None and mixer.accept(delta) else None

    def _mixer(self) -> Mixer:
        """The mixed view of the current base (a new one if the base was replaced)."""
        if self.mixer is None or self.mixer.base is not self.adapters.base:
            self.mixer = Mixer(self.adapters.base, pack=self.prepack)
            if self.measured is not None:  # a replaced base, the same machine: built in the
                self.mixer.take(self.measured)  # worker under the lock, so no second timing
            elif self.measure:
                self.measured = self.mixer.measure()
                self.stats.products = self.measured.describe()
            self.continuous.clear()
            self.stop_ids = stop_token_ids(self.adapters.base, self.adapters.tokenizer)
        return self.mixer

    def _model(self, job: Job):
        if job.adapter == BASE:
            return self.adapters.base
        served = self.adapters.runs.get(job.adapter)
        return served.model if served else None

    def _join(self, slot: tuple, jobs: list[Job]) -> None:
        batch = self.batches.get(slot)
        if batch is None:
            mixer = self.mixer if slot[0] == "mixed" else None
            model = mixer.model if mixer else self._model(jobs[0])
            # eval mode once here, inference mode per forward: `inference()`, which also puts
            # every module's mode back after, walks the view's ~600 modules three times (4 ms a
            # call on SmolLM2; 8 % of the worker's time under cProfile when it wrapped each step)
            batch = RunningBatch(
                model.eval(), self.adapters.tokenizer, self.wordlike, self.stats, mixer,
                self.prefixes,
            )  # fmt: skip
            self.batches[slot] = batch
        deltas = [job.delta for job in jobs] if batch.mixer else None
        with torch.inference_mode():
            if batch.can_fold():
                batch.fold(jobs, deltas)  # this turn's step of the batch too
                self.folded.add(slot)
            else:
                batch.join(jobs, deltas)
        self._end_if_empty(slot)

    def _step(self) -> None:
        """One decoding step of the next running batch (round robin)."""
        slots = [slot for slot in self.batches if slot not in self.folded]
        if not slots:
            return
        slot = slots[self.turn % len(slots)]
        self.turn += 1
        batch = self.batches[slot]
        with torch.inference_mode():
            batch.step()
        self._end_if_empty(slot)

    def _end_if_empty(self, slot: tuple) -> None:
        batch = self.batches[slot]
        if not len(batch):
            del self.batches[slot]
            adapters = "+".join(sorted({job.adapter for job in batch.seen}))
            self.history.append((adapters, [job.finish_reason for job in batch.seen]))

    def _classic(self, jobs: list[Job]) -> None:
        """A batch `generate` decodes whole (sampling, prompt-learning models, ...)."""
        decode(self._model(jobs[0]), self.adapters.tokenizer, jobs)
        self.stats.classic += 1
        self.stats.classic_rows += len(jobs)
        self.stats.finished += len(jobs)
        self.history.append((jobs[0].adapter, [job.finish_reason for job in jobs]))

    def _forget_finished(self) -> None:
        with self.condition:
            self.running = [job for job in self.running if job.finish_reason is None]
            if self.closed:
                for job in self.running:
                    job.cancelled.set()


class Wordlike:
    """token id -> True when its text holds a letter or digit (cached; the output penalty's
    test, as `OutputRepetitionPenalty.is_word`)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.known = tokenizer, {}

    def __call__(self, token: int) -> bool:
        if token not in self.known:
            text = self.tokenizer.decode([token], skip_special_tokens=True)
            self.known[token] = any(character.isalnum() for character in text)
        return self.known[token]
