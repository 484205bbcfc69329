"""Continuous batching: requests join a running batch between decoding steps and leave it as
soon as they are done.

A `RunningBatch` decodes greedily for one model: a run's view, or a `Mixer`'s view of the base
on which every row gets its own run's delta (`tunelab.serve.mixed`). It owns a transformers
`DynamicCache` whose rows are left-padded to one length and an attention mask (B, L) that marks
each row's real positions. Each row keeps its own position ids (its count of real tokens, as
`generate` derives them from the mask), so a row's numbers do not depend on how much padding
sits in front of it, and its own decoding options.

- `join(jobs)`: one forward over the new prompts (left-padded among themselves, a fresh cache)
  gives their first tokens; their cache and mask are then padded on the left to the running
  batch's length (or the batch's to theirs) and concatenated on the batch dimension. When
  every new row's prompt starts with a prefix whose keys and values the `PrefixCache` holds
  for its view (`tunelab.serve.prefix`: the chat template and system prompt, usually, behind a
  prompt-tuning row's virtual tokens), only what follows it goes through the model, on a copy
  of those keys and values.
- `step()`: one forward of every row's last token against the cache: one new token per row.
- `fold(jobs)`: both in one forward (a running batch on a Llama-style model: `can_fold`): the
  running rows' last tokens and the joiners' new tokens (a prompt-tuning joiner's virtual
  embeddings first) as one-token rows, attention in two groups (`tunelab.serve.fold`), each
  joiner on its own cached prefix; the engine then skips that batch's step.
- Rows whose job finished (EOS, stop string, newline stop, their own `max_tokens`, client gone)
  are dropped from the cache at once, and columns that are padding in every remaining row are
  cut, so no forward is spent on finished rows.

The logits go through `RowGuards` (the repetition guards, per row) and `argmax`, as `generate`
does greedily, so a row's tokens are those of the same prompt decoded alone. A prompt-tuning row
is prefilled from embeddings (its virtual tokens, then its prompt) and its guards see what
`generate` sees when it decodes from embeddings (no prompt ids). Sampling, prefix tuning (its
KV prefix), caches other than plain `DynamicLayer`s (sliding windows) and generation configs
with processors of their own are not handled here: `decoding_ok` / `continuous_ok` say so and
the engine decodes those through `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from tunelab.evaluate.generation import left_pad, stop_token_ids
from tunelab.methods.prompt_cache import is_prompt_learning
from tunelab.serve.fold import Fold, fold_ok, folding, install
from tunelab.serve.mixed import Mixer, RowDelta
from tunelab.serve.prefix import PrefixCache
from tunelab.serve.rowguards import GuardOptions, RowGuards

VIRTUAL = -1  # a virtual token in a row's sequence (no token id is negative)
HANDLED = {  # decoding options a running batch applies itself
    "do_sample", "repetition_penalty", "no_repeat_ngram_size", "repetition_guard",
    "output_repetition_penalty", "min_new_tokens", "stop_at_newline",
}  # fmt: skip
OFF = {  # generation-config fields that would add processors generate applies and we do not
    "repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
    "encoder_repetition_penalty": (None, 1.0), "bad_words_ids": (None,),
    "sequence_bias": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "min_length": (None, 0),
    "min_new_tokens": (None, 0), "guidance_scale": (None, 1.0), "do_sample": (None, False),
}  # fmt: skip


@dataclass
class Stats:
    """What the engine did, for the benchmark and tests: forwards and rows per forward."""

    steps: int = 0  # decoding forwards (one new token per row)
    step_rows: int = 0  # rows summed over those forwards
    step_runs: int = 0  # distinct served runs (base included) summed over those forwards
    prefills: int = 0  # prompt forwards (rows joining)
    prefill_rows: int = 0
    prefix_hits: int = 0  # rows prefilled on a cached prompt prefix
    prefix_tokens: int = 0  # prompt tokens those rows took from the prefix cache
    folds: int = 0  # prefills folded into a decoding step (counted as both)
    classic: int = 0  # batches decoded by `generate` (sampling, prompt learning, ...)
    classic_rows: int = 0
    finished: int = 0  # jobs done
    step_s: float = 0.0  # wall seconds the worker spent in decoding steps,
    prefill_s: float = 0.0  # in prefills (rows joining),
    classic_s: float = 0.0  # in `generate` batches,
    idle_s: float = 0.0  # and waiting for work (no job, or a batch filling)
    products: dict | None = None  # the mixed view's measured products (`Products.describe`)

    def stepped(self, jobs: list) -> None:
        """Count a decoding forward over `jobs`' rows."""
        self.steps += 1
        self.step_rows += len(jobs)
        self.step_runs += len({job.adapter for job in jobs})

    def prefilled(self, rows: int) -> None:
        """Count a prefill of `rows` prompts."""
        self.prefills += 1
        self.prefill_rows += rows

    def cached(self, lengths: list[int]) -> None:
        """Count prompts prefilled on a cached prefix of these `lengths`."""
        self.prefix_hits += len(lengths)
        self.prefix_tokens += sum(lengths)

    def summary(self) -> dict:
        forwards = self.steps + self.prefills
        return {
            **self.__dict__,
            "mean_rows_per_step": self.step_rows / self.steps if self.steps else 0.0,
            "mean_runs_per_step": self.step_runs / self.steps if self.steps else 0.0,
            "forwards_per_request": forwards / self.finished if self.finished else 0.0,
        }


def continuous_ok(model, decoding: dict) -> bool:
    """True when a `RunningBatch` decodes `model` with `decoding` exactly as `generate` does."""
    return decoding_ok(model, decoding) and not is_prompt_learning(model)


def decoding_ok(model, decoding: dict) -> bool:
    """True when greedy decoding with `decoding` on `model`'s generation config and cache is
    what a `RunningBatch` applies (prompt learning aside: only a mixed batch takes that)."""
    if decoding.get("do_sample") or set(decoding) - HANDLED:
        return False
    config = getattr(model, "generation_config", None)
    if config is not None and any(getattr(config, name, None) not in allowed
                                  for name, allowed in OFF.items()):  # fmt: skip
        return False
    cache = DynamicCache(config=model.config)
    return all(type(layer) is DynamicLayer for layer in cache.layers)


class RunningBatch:
    """Greedy decoding of a changing set of jobs on one model (a mixer's view: rows of several
    runs); each job brings its own decoding options."""

    def __init__(
        self, model, tokenizer, wordlike, stats: Stats, mixer: Mixer | None = None,
        prefixes: PrefixCache | None = None,
    ) -> None:  # fmt: skip
        self.model, self.tokenizer, self.stats, self.mixer = model, tokenizer, stats, mixer
        self.prefixes = prefixes  # shared prompt-prefix K/V (None: prefill every prompt whole)
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        )
        vocab = model.get_output_embeddings().weight.shape[0]
        self.guards = RowGuards(GuardOptions(), vocab, self.stop_ids, wordlike)
        self.jobs: list = []  # engine Jobs, in row order
        self.deltas: list[RowDelta | None] = []  # each row's run, with a mixer (None: the base)
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)  # (B, L): 1 where a cache slot is real
        self.last = torch.zeros(0, dtype=torch.long)  # (B,): each row's token not yet cached
        self.device = next(model.parameters()).device
        self.seen: list = []  # every job that was in the batch (for the engine's history)
        self.foldable = fold_ok(model)
        if self.foldable:
            install(model)  # joining prompts may be folded into a step (`fold`)

    def __len__(self) -> int:
        return len(self.jobs)

    def _forward(self, inputs, mask, positions, cache, deltas) -> torch.Tensor:
        """(B, V) float32 logits of the last position; `inputs` are ids (B, T) or embeddings
        (B, T, H); `deltas` the rows' runs (mixed batches)."""
        if self.mixer is not None:
            self.mixer.use(deltas)
        name = "inputs_embeds" if inputs.dim() == 3 else "input_ids"
        mask = None if mask is None else mask.to(self.device)  # None: a fold's own groups
        out = self.model(
            **{name: inputs.to(self.device)}, attention_mask=mask,
            position_ids=positions.to(self.device), cache=cache, use_cache=cache is not None,
            logits_to_keep=1,
        )  # fmt: skip
        return out.logits[:, -1, :].to(dtype=torch.float32)

    def join(self, jobs: list, deltas: list[RowDelta | None] | None = None) -> None:
        """Prefill `jobs`' prompts in one forward, take their first tokens, add their rows
        (`deltas`: their runs, in a mixed batch)."""
        deltas = deltas or [None] * len(jobs)
        prompts = [job.prompt_ids for job in jobs]
        cache, mask, logits = self._prefill(prompts, deltas)
        self.stats.prefilled(len(jobs))
        start = len(self.jobs)
        # generate() decodes a prompt-tuning row from embeddings: its processors see no prompt
        embedded = [delta is not None and delta.virtual is not None for delta in deltas]
        contexts = [[] if e else p for p, e in zip(prompts, embedded, strict=True)]
        self._add_rows(jobs, deltas, contexts, cache, mask)
        self._take(logits, start)

    def can_fold(self) -> bool:
        """True when joiners can be folded into this batch's next step: it has rows, and its
        model's attention is one `tunelab.serve.fold` serves."""
        return self.foldable and len(self.jobs) > 0 and self.cache is not None

    def fold(self, jobs: list, deltas: list[RowDelta | None] | None = None) -> None:
        """One forward: a decoding step of the running rows and the prefill of `jobs`' prompts
        (`tunelab.serve.fold`; `deltas`: their runs, in a mixed batch), each on its own cached
        prefix if it has one; every row takes its next token, the new rows their first."""
        deltas = deltas or [None] * len(jobs)
        prompts = [job.prompt_ids for job in jobs]
        matches = [self._match(p, d) for p, d in zip(prompts, deltas, strict=True)]
        rows = len(self.jobs)
        inputs, positions, row_deltas, where, seen = self._fold_rows(prompts, deltas, matches)
        prefix = self._fold_prefix(matches, seen)
        self.mask = torch.cat([self.mask, torch.ones(rows, 1, dtype=torch.long)], dim=1)
        fold = Fold(self.cache.layers, self.mask.bool(), where, seen, prefix)
        with folding(fold):
            logits = self._forward(inputs, None, positions, None, row_deltas)
        logits = torch.cat([logits[:rows], logits[where[:, -1].to(logits.device)]])
        cache = DynamicCache(config=self.model.config)
        for index, (keys, values) in enumerate(zip(fold.keys, fold.values, strict=True)):
            cache.update(keys, values, index)
        mask = seen.to(torch.long)
        self.stats.stepped(self.jobs)
        self.stats.prefilled(len(jobs))
        self.stats.folds += 1
        self._remember(prompts, deltas, cache, mask)
        contexts = [[] if len(_virtual(d)) else p for p, d in zip(prompts, deltas, strict=True)]
        self._add_rows(jobs, deltas, contexts, cache, mask)
        self._take(logits, 0)

    def _fold_rows(self, prompts: list, deltas: list, matches: list) -> tuple:
        """A fold's one-token rows — the running rows' last tokens, then each joiner's new
        tokens (after its cached prefix of P tokens; a prompt-tuning joiner's virtual ones
        first) — as (inputs: ids (N, 1) or embeddings (N, 1, H), positions (N, 1), each row's
        delta, `where`, `seen`: the joiners' columns, see `Fold`)."""
        sequences = [_sequence(p, d) for p, d in zip(prompts, deltas, strict=True)]
        news = [seq[shared:] for seq, (shared, _) in zip(sequences, matches, strict=True)]
        length = max(len(new) + shared for new, (shared, _) in zip(news, matches, strict=True))
        where = torch.full((len(prompts), length), -1, dtype=torch.long)
        seen = torch.zeros(len(prompts), length, dtype=torch.bool)
        ids, positions = self.last.tolist(), self.mask.sum(dim=1).tolist()
        row_deltas, embedded, row = list(self.deltas), [], len(self.jobs)
        for index, (new, (shared, _), delta) in enumerate(zip(news, matches, deltas, strict=True)):
            count = len(new)
            where[index, length - count :] = torch.arange(row, row + count)
            seen[index, length - count - shared :] = True
            virtual = _virtual(delta)[shared:]  # those not in its cached prefix
            if len(virtual):
                embedded.append((row, virtual))
            ids += [token if token != VIRTUAL else self.pad_id for token in new]
            positions += range(shared, shared + count)
            row_deltas += [delta] * count
            row += count
        inputs = torch.tensor(ids)[:, None]
        if embedded:  # prompt-tuning joiners: their virtual tokens' embeddings, then the prompt
            inputs = self.model.get_input_embeddings()(inputs.to(self.device))
            for start, vectors in embedded:
                inputs[start : start + len(vectors), 0] = vectors.to(inputs.dtype)
        return inputs, torch.tensor(positions)[:, None], row_deltas, where, seen

    def _fold_prefix(self, matches: list, seen: torch.Tensor) -> list | None:
        """Per layer the joiners' cached prefix (keys, values) in their first `seen` columns
        (zeros elsewhere), or None when no joiner has one; counts the hits."""
        if not any(shared for shared, _ in matches):
            return None
        starts = seen.to(torch.long).argmax(dim=1).tolist()  # each joiner's first column
        layers = []
        for index, layer in enumerate(self.cache.layers):
            shape = (len(matches), layer.keys.shape[1], seen.shape[1])
            keys = layer.keys.new_zeros(*shape, layer.keys.shape[3])
            values = layer.values.new_zeros(*shape, layer.values.shape[3])
            for row, ((shared, entry), start) in enumerate(zip(matches, starts, strict=True)):
                if shared:
                    keys[row, :, start : start + shared] = entry.keys[index][0, :, :shared]
                    values[row, :, start : start + shared] = entry.values[index][0, :, :shared]
            layers.append((keys, values))
        self.stats.cached([shared for shared, _ in matches if shared])
        return layers

    def _add_rows(self, jobs: list, deltas: list, contexts: list, cache, mask) -> None:
        """Append `jobs` as rows (their runs `deltas`, the ids their guards see before the
        output `contexts`, their `cache` and `mask`)."""
        prompts = [job.prompt_ids for job in jobs]
        self.guards.add(prompts, contexts, [guard_options(job.decoding) for job in jobs])
        self.jobs.extend(jobs)
        self.deltas.extend(deltas)
        self.seen.extend(jobs)
        self._merge(cache, mask)

    def _prefill(self, prompts: list[list[int]], deltas: list) -> tuple:
        """(cache, mask, logits) of the prompts: on the shared prefix's cached K/V when every
        row has one (only what follows it goes through the model), else whole."""
        cache = DynamicCache(config=self.model.config)
        shared, entries = self._cached_prefix(prompts, deltas)
        if shared:  # every row's virtual tokens, if any, are in it: the rest are ids
            sequences = [_sequence(p, d) for p, d in zip(prompts, deltas, strict=True)]
            rest = left_pad([sequence[shared:] for sequence in sequences], self.pad_id)
            inputs = rest["input_ids"]
            mask = torch.cat([torch.ones(len(prompts), shared, dtype=torch.long),
                              rest["attention_mask"]], dim=1)  # fmt: skip
            for index in range(len(cache.layers)):
                keys = torch.cat([entry.keys[index][:, :, :shared] for entry in entries])
                values = torch.cat([entry.values[index][:, :, :shared] for entry in entries])
                cache.update(keys, values, index)
            self.stats.cached([shared] * len(prompts))
        else:
            inputs, mask = self._prefill_inputs(prompts, deltas)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)[
            :, mask.shape[1] - inputs.shape[1] :
        ]
        logits = self._forward(inputs, mask, positions, cache, deltas)
        self._remember(prompts, deltas, cache, mask)
        return cache, mask, logits

    def _cached_prefix(self, prompts: list[list[int]], deltas: list) -> tuple[int, list]:
        """(P, each row's cache entry): the longest prefix every row has cached (covering a
        prompt-tuning row's virtual tokens), or (0, [])."""
        matches = [
            self._match(prompt, delta) for prompt, delta in zip(prompts, deltas, strict=True)
        ]
        shared = min(length for length, _ in matches)
        if any(shared < len(_virtual(delta)) for delta in deltas):
            shared = 0  # a row would start inside its virtual tokens: embeddings, not ids
        return (shared, [entry for _, entry in matches]) if shared else (0, [])

    def _match(self, prompt: list[int], delta: RowDelta | None) -> tuple[int, object]:
        """(P, entry): the longest cached prefix of the row's sequence (`_sequence`) on its
        row's view, or (0, None)."""
        if self.prefixes is None:
            return 0, None
        return self.prefixes.match(self.model, _view(delta), _sequence(prompt, delta))

    def _remember(self, prompts: list[list[int]], deltas: list, cache, mask) -> None:
        """Store each prompt's K/V (its real columns) in the prefix cache."""
        if self.prefixes is None:
            return
        for row, (prompt, delta) in enumerate(zip(prompts, deltas, strict=True)):
            real = mask[row].nonzero().squeeze(-1).to(self.device)
            keys = [layer.keys[row : row + 1].index_select(2, real) for layer in cache.layers]
            values = [layer.values[row : row + 1].index_select(2, real) for layer in cache.layers]
            self.prefixes.store(self.model, _view(delta), _sequence(prompt, delta), keys, values)

    def _prefill_inputs(self, prompts: list[list[int]], deltas: list) -> tuple:
        """(ids or embeddings, mask), left-padded; a prompt-tuning row's virtual tokens go
        right before its prompt (behind the padding, as `prompt_cache` puts them)."""
        if all(delta is None or delta.virtual is None for delta in deltas):
            batch = left_pad(prompts, self.pad_id)
            return batch["input_ids"], batch["attention_mask"]
        embed = self.model.get_input_embeddings()
        rows = []
        for prompt, delta in zip(prompts, deltas, strict=True):
            row = embed(torch.tensor(prompt, device=self.device))
            if delta is not None and delta.virtual is not None:
                row = torch.cat([delta.virtual.to(row.dtype), row])
            rows.append(row)
        length = max(len(row) for row in rows)
        pad = embed(torch.tensor([self.pad_id], device=self.device))
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for index, row in enumerate(rows):
            mask[index, length - len(row) :] = 1
        padded = [torch.cat([pad.expand(length - len(row), -1), row]) for row in rows]
        return torch.stack(padded), mask

    def step(self) -> None:
        """One new token for every row."""
        self.mask = torch.cat([self.mask, torch.ones(len(self.jobs), 1, dtype=torch.long)], dim=1)
        positions = self.mask.sum(dim=1, keepdim=True) - 1  # (B, 1): the row's own position
        logits = self._forward(self.last[:, None], self.mask, positions, self.cache, self.deltas)
        self.stats.stepped(self.jobs)
        self._take(logits, 0)

    def _take(self, logits: torch.Tensor, start: int) -> None:
        """Rows start.. take their greedy next token; finished rows leave the batch."""
        scores = self.guards.apply(logits, start) if self.guards.active else logits
        tokens = scores.argmax(dim=-1).cpu()  # (B - start,)
        self.last = torch.cat([self.last[:start], tokens])
        chosen = tokens.tolist()
        self.guards.observe(chosen, start)
        for job, token in zip(self.jobs[start:], chosen, strict=True):
            if job.finish_reason is None:
                newline = bool(job.decoding.get("stop_at_newline"))
                job.advance(token, self.tokenizer, self.stop_ids, newline=newline)
        keep = [i for i, job in enumerate(self.jobs) if job.finish_reason is None]
        if len(keep) < len(self.jobs):
            self.stats.finished += len(self.jobs) - len(keep)
            self._keep(keep)

    def _merge(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append the rows of `cache` (their mask `mask`), left-padding whichever is shorter."""
        if self.cache is None or not len(self.mask):
            self.cache, self.mask = cache, mask
            return
        length = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, length), _pad_left(theirs.keys, length)])
            mine.values = torch.cat(
                [_pad_left(mine.values, length), _pad_left(theirs.values, length)]
            )
        self.mask = torch.cat([_pad_left(self.mask, length, dim=1), _pad_left(mask, length, dim=1)])

    def _keep(self, indices: list[int]) -> None:
        """Keep the rows at `indices`; cut leading columns that are padding in all of them."""
        self.jobs = [self.jobs[i] for i in indices]
        self.deltas = [self.deltas[i] for i in indices]
        self.guards.keep(indices)
        self.last = self.last[indices]
        self.mask = self.mask[indices]
        if not indices:
            self.cache = None
            self.mask = torch.zeros(0, 0, dtype=torch.long)
            return
        used = self.mask.any(dim=0)
        cut = int(used.to(torch.long).argmax()) if not bool(used[0]) else 0
        self.mask = self.mask[:, cut:]
        index = torch.tensor(indices, device=self.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, cut:]
            layer.values = layer.values.index_select(0, index)[:, :, cut:]


def _sequence(prompt: list[int], delta: RowDelta | None) -> list[int]:
    """What a row's cache holds, as the prefix cache keys it: a prompt-tuning row's virtual
    tokens (the same for every prompt of its run) as VIRTUAL, then its prompt."""
    return [VIRTUAL] * len(_virtual(delta)) + prompt


def _virtual(delta: RowDelta | None) -> torch.Tensor | list:
    """A row's prompt-tuning embeddings (V, H) that go before its prompt; [] for other rows."""
    return [] if delta is None or delta.virtual is None else delta.virtual


def _view(delta: RowDelta | None) -> int | None:
    """Which weights a row's K/V come from, within one model: its run (None: the model's own)."""
    return None if delta is None else delta.serial


def guard_options(decoding: dict) -> GuardOptions:
    """The options of `decoding` that `RowGuards` applies."""
    return GuardOptions(**{k: v for k, v in decoding.items() if k in GuardOptions.__annotations__})


def _pad_left(tensor: torch.Tensor, length: int, dim: int = 2) -> torch.Tensor:
    """`tensor` with zeros in front along `dim` up to `length` (K/V: dim 2; masks: dim 1)."""
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim) + [missing, 0]
    return F.pad(tensor, pad)
