"""Batched generation for evaluation: left padding, KV cache, greedy by default.

Prompts are already fully rendered (chat or text template applied), so they are encoded with
`add_special_tokens=False`, then given a BOS exactly where the training data gets one
(tokenizers that prepend it, e.g. Gemma's, whose models derail without it). Each prompt is
encoded once; prompts are sorted by token length so a batch holds similar lengths (little
padding), then results are put back in input order.

Decoder-only models continue from the last position, so pads go on the LEFT: every row's last
real token sits at the same index and the new tokens line up. We pad the token ids ourselves
rather than flipping `tokenizer.padding_side`, so the tokenizer is never modified (and a
tokenizer without a pad token works: EOS pads).

Greedy decoding drops a row from the batch as soon as it stops (EOS or the newline stop), so a
batch costs the sum of its rows' own lengths rather than its longest row times its size
(`tunelab/evaluate/greedy.py`; same tokens as transformers' `generate`).

PEFT prompt-learning models (prompt tuning, p-tuning, prefix tuning) are special: with
transformers 5 and peft 0.21, `model.generate` re-injects the virtual tokens at every cached
decoding step (prompt tuning) or drops the prefix entirely (prefix tuning), silently producing
text the trained model would not. For them `tunelab.methods.prompt_cache.generate_tokens`
puts the virtual tokens or the prefix in front once and runs the base model's cached
`generate` (tests check it equals full forward passes without a cache, token for token).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from tunelab.data.tokenize import missing_bos
from tunelab.evaluate.decoding import (
    NewlineStop,
    NewNGramGuard,
    OutputRepetitionPenalty,
    first_line_answer,
)
from tunelab.evaluate.greedy import can_shrink, greedy_generate
from tunelab.evaluate.modes import inference, model_device
from tunelab.methods.prompt_cache import generate_tokens, is_prompt_learning


def generate(
    model: nn.Module,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    do_sample: bool = False,
    progress: bool = False,
    repetition_guard: int = 0,
    output_repetition_penalty: float = 1.0,
    stop_at_newline: bool = False,
    **decoding,
) -> list[str]:
    """The model's continuation of each prompt, decoded without special tokens and stripped.

    Generation stops at EOS (the tokenizer's and the model's generation config's) or after
    `max_new_tokens`; a finished row leaves the batch (greedy decoding, `evaluate/greedy.py`)
    or is padded while the others go on, and the batch stops when every row has finished.
    `repetition_guard` = n > 0 forbids repeating an n-gram of tokens within an output unless
    the prompt holds it (`NewNGramGuard`); `output_repetition_penalty` > 1 penalises word
    tokens the output already used that the prompt does not hold (`OutputRepetitionPenalty`);
    `stop_at_newline` ends a row at the first newline after its answer began and keeps only
    that line.
    `decoding` passes options such as `repetition_penalty` or `no_repeat_ngram_size` (these
    two also count the prompt), `temperature` or `top_p` on to `generate`; with `do_sample`,
    `seed` fixes the draws (torch's CPU RNG is left as it was). The model is in eval mode
    under `torch.inference_mode()` for the call; each module's training flag is restored
    afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    encoded = encode_prompts(tokenizer, prompts)
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    prompt_learning = is_prompt_learning(model)
    lengths = [len(ids) for ids in encoded]
    outputs: list[str] = [""] * len(prompts)
    seed = decoding.pop("seed", None)
    with (
        inference(model),
        torch.random.fork_rng(devices=[], enabled=seed is not None),
        _progress_bar(progress, len(prompts)) as advance,
    ):
        if seed is not None:
            torch.manual_seed(seed)
        device = model_device(model)
        for chosen in _batches(lengths, batch_size):
            batch = left_pad([encoded[index] for index in chosen], pad_id)  # (B, T)
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            rows = [encoded[index] for index in chosen]
            options = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, **decoding)
            guards = (repetition_guard, stop_at_newline, output_repetition_penalty)
            options.update(guard_options(tokenizer, rows, *guards))
            tokens = generate_batch(model, batch, options, stop_ids, pad_id, prompt_learning)
            new_tokens = tokens[:, batch["input_ids"].shape[1] :]  # (B, new)
            for index, row in zip(chosen, new_tokens.tolist(), strict=True):
                text = _decode(tokenizer, row, stop_ids)
                outputs[index] = first_line_answer(text) if stop_at_newline else text
            advance(len(chosen))
    return outputs


def guard_options(
    tokenizer, prompts: list[list[int]], guard: int, stop_at_newline: bool, penalty: float = 1.0
) -> dict:
    """`generate` options for the repetition guards and the newline stop (fresh per batch)."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    options = {}
    processors = [NewNGramGuard(guard, prompts)] if guard else []
    if penalty != 1.0:
        processors.append(OutputRepetitionPenalty(penalty, prompts, tokenizer))
    if processors:
        options["logits_processor"] = LogitsProcessorList(processors)
    if stop_at_newline:
        options["stopping_criteria"] = StoppingCriteriaList([NewlineStop(tokenizer, len(prompts))])
    return options


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids per prompt; an empty prompt starts from BOS (or EOS) so there is a position."""
    if not prompts:
        return []
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    bos = missing_bos(tokenizer)  # as tunelab.data.tokenize gives the training prompts
    if bos is not None:
        encoded = [ids if ids[:1] == [bos] else [bos, *ids] for ids in encoded]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None and any(not ids for ids in encoded):
        raise ValueError("an empty prompt needs a BOS or EOS token to start from")
    return [ids if ids else [start] for ids in encoded]


def stop_token_ids(model: nn.Module, tokenizer) -> list[int]:
    """EOS ids of the tokenizer and of the model's generation config (chat models list several)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if not isinstance(configured, list):
        configured = [configured]
    ids = [i for i in [tokenizer.eos_token_id, *configured] if i is not None]
    if not ids:
        raise ValueError("the tokenizer has no EOS token, so generation could not stop")
    return list(dict.fromkeys(ids))


def _batches(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Prompt indices in batches, longest prompts first (a memory problem shows at once)."""
    batch: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if len(batch) == batch_size:
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def left_pad(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (B, T), each row right-aligned behind `pad_id`s."""
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, length - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[index, length - len(row) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def generate_batch(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    options: dict,
    stop_ids: list[int],
    pad_id: int,
    prompt_learning: bool,
) -> torch.Tensor:
    """(B, T + new) tokens: prompt then continuation, padded after a row stops. Greedy
    decoding drops finished rows from the batch where it can (`greedy.can_shrink`)."""
    if not prompt_learning and can_shrink(model, options):
        return greedy_generate(
            model, batch["input_ids"], batch["attention_mask"], stop_ids=stop_ids, pad_id=pad_id,
            **options,
        )  # fmt: skip
    if prompt_learning:
        return generate_tokens(
            model, batch["input_ids"], batch["attention_mask"], eos_ids=stop_ids, pad_id=pad_id,
            **options,
        )  # fmt: skip
    return model.generate(
        **batch, **options, use_cache=True, eos_token_id=stop_ids, pad_token_id=pad_id
    )  # (B, T + new)


def _decode(tokenizer, new_tokens: list[int], stop_ids: list[int]) -> str:
    """Text of the new tokens up to the first stop token, without special tokens, stripped."""
    for position, token in enumerate(new_tokens):
        if token in stop_ids:
            new_tokens = new_tokens[:position]
            break
    return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


@contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """Yields `advance(count)`; draws a rich progress bar only when `enabled`."""
    if not enabled:
        yield lambda count: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("generating", total=total)
        yield lambda count: bar.advance(task, count)
