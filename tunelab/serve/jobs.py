"""One completion request as the serving engine sees it (`tunelab.serve.engine`).

Job          the request: its prompt, decoding options, stop strings and token budget; each
             token it is given (`advance`) turns into deltas of its text for its `emit`
             callback, held back where a stop string or an unfinished character may follow
FollowRows   the stopping criterion that feeds `generate`'s tokens to a batch's jobs
decode       a batch of one key decoded whole by offline generation's own function (sampling,
             prompt learning, sliding-window caches: what the running batch does not cover)
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from tunelab.evaluate.decoding import first_line_answer
from tunelab.evaluate.generation import generate_batch, guard_options, left_pad, stop_token_ids
from tunelab.evaluate.modes import inference, model_device
from tunelab.methods.prompt_cache import is_prompt_learning
from tunelab.serve.mixed import RowDelta

TRAILING = re.compile(r"[\s\ufffd]+$")


@dataclass(eq=False)
class Job:
    """One completion request as the worker sees it; events go out through `emit`:
    {"delta": text}, then {"done": text, "finish_reason", "prompt_tokens", "completion_tokens"}
    or {"error": message, "status": code}."""

    adapter: str
    prompt_ids: list[int]
    max_new_tokens: int
    emit: Callable[[dict], None]
    decoding: dict = field(default_factory=dict)  # do_sample, temperature, top_p, penalties
    seed: int | None = None
    stop: tuple[str, ...] = ()
    cancelled: threading.Event = field(default_factory=threading.Event)
    delta: RowDelta | None = None  # its run as a mixed batch applies it (set by the worker)
    tokens: list[int] = field(default_factory=list)
    sent: str = ""
    finish_reason: str | None = None
    arrived: float = field(default_factory=time.monotonic)

    def key(self) -> tuple:
        """Jobs with equal keys can share a batch."""
        sampling = bool(self.decoding.get("do_sample"))
        return self.adapter, tuple(sorted(self.decoding.items())), self.seed if sampling else None

    def advance(self, token: int, tokenizer, stop_ids: list[int], newline: bool = False) -> None:
        """Take the row's next token; emit new text; finish on EOS, stop string, length, or
        (with `newline`, the run's `stop_at_newline`) a newline after the answer began, keeping
        its first line as offline generation does."""
        if self.cancelled.is_set():
            return self.finish("cancelled", self.sent)
        if token in stop_ids:
            return self.finish("stop", self._text(tokenizer))
        self.tokens.append(token)
        text = self._text(tokenizer)
        if newline and "\n" in text:
            return self.finish("stop", first_line_answer(text))
        for stop in self.stop:
            if stop in text:
                return self.finish("stop", text[: text.index(stop)])
        if len(self.tokens) >= self.max_new_tokens:
            return self.finish("length", text)
        hold = max((len(stop) - 1 for stop in self.stop), default=0)
        # Hold back trailing whitespace (strip() may drop it) and trailing U+FFFD (the start of
        # a character whose other bytes are still to come), so what is sent is never taken back.
        ready = TRAILING.sub("", text[: len(text) - hold])
        if len(ready) > len(self.sent) and ready.startswith(self.sent):
            self.emit({"delta": ready[len(self.sent) :]})
            self.sent = ready

    def finish(self, reason: str, text: str) -> None:
        """Emit what is left of the text, then the final event (once)."""
        self.finish_reason = reason
        text = text.strip()
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.emit({"delta": text[len(self.sent) :]})
        self.emit(
            {
                "done": text,
                "finish_reason": reason,
                "prompt_tokens": len(self.prompt_ids),
                "completion_tokens": len(self.tokens),
            }
        )

    def _text(self, tokenizer) -> str:
        return tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()


class FollowRows(StoppingCriteria):
    """Feeds each decoding step's new tokens to the batch's jobs; (B,) True where a row is done."""

    def __init__(self, jobs: list[Job], tokenizer, stop_ids: list[int], newline: bool) -> None:
        self.jobs, self.tokenizer, self.stop_ids, self.newline = jobs, tokenizer, stop_ids, newline

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        for job, token in zip(self.jobs, input_ids[:, -1].tolist(), strict=True):
            if job.finish_reason is None:
                job.advance(token, self.tokenizer, self.stop_ids, self.newline)
        done = [job.finish_reason is not None for job in self.jobs]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def decode(model, tokenizer, jobs: list[Job]) -> None:
    """Decode `jobs` (same key) as one left-padded batch with the KV cache."""
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    decoding = {"do_sample": False, **jobs[0].decoding}
    if decoding.get("do_sample"):
        seed = jobs[0].seed
        torch.manual_seed(seed if seed is not None else random.randrange(2**63))
    newline = bool(decoding.get("stop_at_newline"))
    guards = guard_options(  # the run's repetition guard and newline stop, as offline
        tokenizer, [job.prompt_ids for job in jobs], decoding.pop("repetition_guard", 0),
        decoding.pop("stop_at_newline", False), decoding.pop("output_repetition_penalty", 1.0),
    )  # fmt: skip
    follow = [FollowRows(jobs, tokenizer, stop_ids, newline), *guards.pop("stopping_criteria", [])]
    options = dict(
        max_new_tokens=max(job.max_new_tokens for job in jobs),
        stopping_criteria=StoppingCriteriaList(follow),
        **guards,
        **decoding,
    )
    with inference(model):
        batch = left_pad([job.prompt_ids for job in jobs], pad_id)
        batch = {name: tensor.to(model_device(model)) for name, tensor in batch.items()}
        generate_batch(model, batch, options, stop_ids, pad_id, is_prompt_learning(model))
    for job in jobs:  # rows transformers stopped on its own (its max length)
        if job.finish_reason is None:
            job.finish("length", job._text(tokenizer))
