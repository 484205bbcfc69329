"""What folding joining prompts into a decoding step would save: one forward instead of two.

    python benchmarks/profile_serve_fold.py [MODEL] [--rows 7] [--tries 6] [--threads 2]
    (default embedded:smollm2-135m; random:llama for a tiny model; run from the repository root)

The serving engine now spends a third of its time in prefills of one or two joining prompts,
each a forward of its own beside the decoding step (benchmarks/RESULTS.md, "Serving"). This
measures the design proposed there, on the base model, outside the engine:

- **separate** (what the engine does): a decoding step of `--rows` rows against their cache,
  then a prefill of two chat prompts, left-padded, in a forward of its own;
- **folded**: one forward of N one-token rows — the decoding rows' last tokens, then every
  prompt token — each with its own position id, so the linears, norms and rotary embeddings need
  nothing new (and a mixed batch's per-row deltas would become per-token ones). Only attention
  knows the groups: a custom attention function (transformers' `AttentionInterface`) runs the
  decoding rows against their cache and gathers the prompt tokens into (prompts, length),
  left-padded, with a causal and padding mask; the outputs go back to their rows.

It prints the wall ms of each (median of `--tries`), what folding saves, and how far the folded
logits are from the separate ones (float32 rounding: another order of sums) with whether every
greedy token agrees. Nothing here changes the engine.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tunelab.config import DataConfig, ModelConfig
from tunelab.data.templates import render_prompt
from tunelab.evaluate.generation import left_pad
from tunelab.models import load_model_and_tokenizer

JOINING = ["Give the record as JSON: name Ada, age 36.", "List three fruits."]


class Groups:
    """What the folded forward's attention needs to know: the decoding rows' cache and mask,
    and where each prompt's tokens sit among the rows."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor, prompts: list[list[int]]) -> None:
        self.cache, self.rows = cache, mask.shape[0]
        self.mask = torch.cat([mask, torch.ones(self.rows, 1, dtype=mask.dtype)], 1).bool()
        length = max(len(prompt) for prompt in prompts)
        where = torch.full((len(prompts), length), -1)  # row of each (prompt, slot); -1: padding
        row = self.rows
        for index, prompt in enumerate(prompts):
            where[index, length - len(prompt) :] = torch.arange(row, row + len(prompt))
            row += len(prompt)
        self.source = where.clamp(min=0).flatten()  # padding slots read row 0, masked out
        self.slots = (where.flatten() >= 0).nonzero().squeeze(1)
        self.targets = where.flatten()[self.slots]
        self.shape = where.shape
        real = where >= 0
        causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
        keep = causal[None] & real[:, None, :] | torch.eye(length, dtype=torch.bool)[None]
        self.prompt_mask = keep[:, None]  # a padding query attends to itself: no empty row
        self.last = where[:, -1]  # each prompt's last token: the row whose logits it needs


ACTIVE: list[Groups] = []


def folded_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Attention of N one-token rows in two groups (see the module docstring); query, key and
    value are (N, heads, 1, dim)."""
    groups, rows = ACTIVE[-1], ACTIVE[-1].rows
    layer = groups.cache.layers[module.layer_idx]
    keys = torch.cat([layer.keys, key[:rows]], dim=2)
    values = torch.cat([layer.values, value[:rows]], dim=2)
    out = torch.empty_like(query)
    out[:rows] = F.scaled_dot_product_attention(
        query[:rows], keys, values, attn_mask=groups.mask[:, None, None, :], scale=scaling,
        enable_gqa=True,
    )  # fmt: skip

    def gather(tensor: torch.Tensor) -> torch.Tensor:  # (N, H, 1, D) -> (prompts, H, T, D)
        picked = tensor[groups.source].squeeze(2)
        return picked.reshape(*groups.shape, tensor.shape[1], -1).transpose(1, 2)

    prompt_out = F.scaled_dot_product_attention(
        gather(query), gather(key), gather(value), attn_mask=groups.prompt_mask, scale=scaling,
        enable_gqa=True,
    )  # fmt: skip
    flat = prompt_out.transpose(1, 2).reshape(-1, query.shape[1], query.shape[-1])
    out[groups.targets] = flat[groups.slots].unsqueeze(2)
    return out.transpose(1, 2), None


def median_ms(run, tries: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(tries):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), result


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", default="embedded:smollm2-135m")
    parser.add_argument("--rows", type=int, default=7)
    parser.add_argument("--tries", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(ModelConfig(name=args.model))
    AttentionInterface.register("tunelab_fold", folded_attention)
    AttentionMaskInterface.register("tunelab_fold", sdpa_mask)
    folding = copy.deepcopy(model)
    for module in folding.modules():
        if hasattr(module, "config"):
            module.config._attn_implementation = "tunelab_fold"
    encode = lambda text: tokenizer(render_prompt(text, tokenizer, DataConfig()),  # noqa: E731
                                    add_special_tokens=False)["input_ids"]  # fmt: skip
    running = [encode(f"Tell me about item {i} and its long story") for i in range(args.rows)]
    joining = [encode(text) for text in JOINING]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        batch = left_pad(running, pad)
        mask, cache = batch["attention_mask"], DynamicCache(config=model.config)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        first = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions,
                      cache=cache, use_cache=True, logits_to_keep=1)  # fmt: skip
        last = first.logits[:, -1].argmax(-1)
        step_mask = torch.cat([mask, torch.ones(args.rows, 1, dtype=mask.dtype)], 1)
        prompts = left_pad(joining, pad)

        def step():
            return model(input_ids=last[:, None], attention_mask=step_mask,
                         position_ids=step_mask.sum(1, keepdim=True) - 1,
                         cache=copy.deepcopy(cache), use_cache=True, logits_to_keep=1)  # fmt: skip

        def prefill():
            joined = prompts["attention_mask"]
            return model(input_ids=prompts["input_ids"], attention_mask=joined,
                         position_ids=(joined.cumsum(-1) - 1).clamp(min=0),
                         cache=DynamicCache(config=model.config), use_cache=True,
                         logits_to_keep=1)  # fmt: skip

        groups = Groups(cache, mask, joining)
        ids = torch.tensor(last.tolist() + [token for prompt in joining for token in prompt])
        where = mask.sum(1).tolist() + [p for prompt in joining for p in range(len(prompt))]

        def folded():
            ACTIVE.append(groups)
            try:
                return folding(input_ids=ids[:, None], position_ids=torch.tensor(where)[:, None],
                               use_cache=False, logits_to_keep=1)  # fmt: skip
            finally:
                ACTIVE.pop()

        step()
        prefill()
        folded()  # warm
        step_ms, stepped = median_ms(step, args.tries)
        prefill_ms, prefilled = median_ms(prefill, args.tries)
        folded_ms, together = median_ms(folded, args.tries)
    separate = torch.cat([stepped.logits[:, -1], prefilled.logits[:, -1]])
    mine = torch.cat([together.logits[: args.rows, -1], together.logits[groups.last, -1]])
    figures = {"step_ms": step_ms, "prefill_ms": prefill_ms, "folded_ms": folded_ms,
               "saved_ms": step_ms + prefill_ms - folded_ms,
               "max_logit_diff": float((mine - separate).abs().max()),
               "tokens_agree": bool(torch.equal(mine.argmax(-1), separate.argmax(-1)))}  # fmt: skip
    print(f"{args.model}, {args.rows} decoding rows + prompts of {[len(p) for p in joining]} "
          f"tokens, {args.threads} threads: step {step_ms:.1f} ms + prefill {prefill_ms:.1f} ms "
          f"= {step_ms + prefill_ms:.1f} ms separate; folded {folded_ms:.1f} ms; saved "
          f"{figures['saved_ms']:.1f} ms; logits within {figures['max_logit_diff']:.1e}, "
          f"greedy tokens agree: {figures['tokens_agree']}")  # fmt: skip
    return figures


if __name__ == "__main__":
    main()
