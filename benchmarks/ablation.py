"""Step-level ablation of tunelab's speed-ups: one forward + backward per variant on the same
random batches of 8 Xhosa examples, LoRA r=8 on SmolLM2-135M, in one process, measured in
CPU seconds (less sensitive than wall time to a shared machine's load).

    python benchmarks/ablation.py [--batches 4] [--threads 1]

Variants, each adding one change to the one before (see NOTES.md):
reference style (padded batch, the model's own loss over all logits), then packed rows with
transformers' block mask and `logits_to_keep` logits, per-example attention, chunked linear
cross-entropy, fused LoRA, shared prompt prefix.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import time
from unittest import mock

import torch

from tunelab.config import DataConfig, ModelConfig
from tunelab.data import build_datasets, tokenize_examples
from tunelab.data.batching import packed_batch, padded_batch
from tunelab.methods import MethodContext, get_method
from tunelab.models import load_model_and_tokenizer
from tunelab.training.fastpath import fused_lora
from tunelab.training.loss import token_loss_sum
from tunelab.training.packed import packed_attention

DATA = "../shared/data/xhosa/en-xho-aya-style/train.jsonl"


def variants(model) -> dict[str, tuple[bool, bool, list]]:
    """name -> (packed row?, chunked loss?, context managers to enter)."""
    attention = lambda share: packed_attention(model, share_prefixes=share)  # noqa: E731
    return {
        "reference style: padded, loss over all logits": (False, False, []),
        "0 packed row, block mask, logits_to_keep loss": (True, False, []),
        "1 + per-example attention": (True, False, [attention(False)]),
        "2 + chunked linear cross-entropy": (True, True, [attention(False)]),
        "3 + fused LoRA": (True, True, [attention(False), fused_lora(model)]),
        "4 + shared prompt prefix": (True, True, [attention(True), fused_lora(model)]),
    }


def step(model, group, pad_id: int, packed: bool, chunked: bool, contexts: list) -> float:
    """CPU seconds of one forward + backward."""
    started = time.process_time()
    with contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        if not packed:
            model(**padded_batch(group, pad_id), use_cache=False).loss.backward()
        else:
            bypass = contextlib.nullcontext() if chunked else mock.patch(
                "tunelab.training.loss._plain_head", return_value=None
            )  # fmt: skip
            with bypass:
                total, count = token_loss_sum(model, packed_batch(group))
            (total / count).backward()
    model.zero_grad(set_to_none=True)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default=DATA)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(ModelConfig(name="embedded:smollm2-135m"))
    cfg = DataConfig(train=args.data, prompt_field="inputs", response_field="targets",
                     max_length=256, eval_fraction=0.0)  # fmt: skip
    items = tokenize_examples(build_datasets(cfg, tokenizer).train, tokenizer, cfg)
    model = get_method("lora").apply(model, get_method("lora").Config(), MethodContext())
    model.train()
    rng = random.Random(0)
    rates: dict[str, list[float]] = {}
    for _ in range(args.batches):
        group = rng.sample(items, 8)
        tokens = sum(len(item) for item in group)
        for name, (packed, chunked, contexts) in variants(model).items():
            seconds = step(model, group, tokenizer.pad_token_id, packed, chunked, contexts)
            rates.setdefault(name, []).append(tokens / seconds)
    reference = statistics.median(next(iter(rates.values())))
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:48s} {median:7.1f} real tokens/CPU-s  {median / reference:5.2f}x")


if __name__ == "__main__":
    main()
