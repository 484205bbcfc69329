"""What folding joining prompts into a decoding step would save: one forward instead of two.

    python benchmarks/profile_serve_fold.py [MODEL] [--rows 7] [--tries 6] [--threads 2]
    (default embedded:smollm2-135m; random:llama for a tiny model; run from the repository root)

The serving engine spent a third of its time in prefills of one or two joining prompts,
each a forward of its own beside the decoding step (benchmarks/RESULTS.md, "Serving"). This
measures the design proposed there, on the base model, outside the engine:

- **separate** (what the engine does): a decoding step of `--rows` rows against their cache,
  then a prefill of two chat prompts, left-padded, in a forward of its own;
- **folded**: what the engine now does (`RunningBatch.fold`, tunelab/serve/fold.py): one
  forward of N one-token rows — the decoding rows' last tokens, then every prompt token — each
  with its own position id; only attention knows the groups (the decoding rows against their
  cache, the prompt tokens gathered into (prompts, length), causally among themselves).

It prints the wall ms of each (median of `--tries`, the three taken in turn), what folding saves,
and how far the folded logits are from the separate ones (float32 rounding: another order of sums)
with whether every greedy token agrees.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers import DynamicCache

from tunelab.config import DataConfig, ModelConfig
from tunelab.data.templates import render_prompt
from tunelab.evaluate.generation import left_pad
from tunelab.models import load_model_and_tokenizer
from tunelab.serve.fold import Fold, folding, install

JOINING = ["Give the record as JSON: name Ada, age 36.", "List three fruits."]


def interleaved_ms(runs: dict, tries: int) -> tuple[dict[str, float], dict]:
    """Each of `runs` once per try, in turn (so that a slower spell of a shared host falls on
    all): ({label: median wall ms}, {label: last result})."""
    times, results = {label: [] for label in runs}, {}
    for _ in range(tries):
        for label, run in runs.items():
            start = time.perf_counter()
            results[label] = run()
            times[label].append(time.perf_counter() - start)
    return {label: 1e3 * statistics.median(values) for label, values in times.items()}, results


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", default="embedded:smollm2-135m")
    parser.add_argument("--rows", type=int, default=7)
    parser.add_argument("--tries", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(ModelConfig(name=args.model))
    folded_model = copy.deepcopy(model)
    install(folded_model)  # the engine's folded attention (tunelab/serve/fold.py)
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

        length = max(len(prompt) for prompt in joining)
        where = torch.full((len(joining), length), -1, dtype=torch.long)
        row = args.rows
        for index, prompt in enumerate(joining):
            where[index, length - len(prompt) :] = torch.arange(row, row + len(prompt))
            row += len(prompt)
        ids = torch.tensor(last.tolist() + [token for prompt in joining for token in prompt])
        positions = mask.sum(1).tolist() + [p for prompt in joining for p in range(len(prompt))]

        def folded():  # appends the step's K/V to the layers it is given: a copy each time
            layers = copy.deepcopy(cache).layers
            with folding(Fold(layers, step_mask.bool(), where, where >= 0)):
                return folded_model(input_ids=ids[:, None],
                                    position_ids=torch.tensor(positions)[:, None],
                                    use_cache=False, logits_to_keep=1)  # fmt: skip

        step()
        prefill()
        folded()  # warm
        ms, results = interleaved_ms({"step": step, "prefill": prefill, "folded": folded},
                                     args.tries)  # fmt: skip
    step_ms, prefill_ms, folded_ms = ms["step"], ms["prefill"], ms["folded"]
    stepped, prefilled, together = results["step"], results["prefill"], results["folded"]
    separate = torch.cat([stepped.logits[:, -1], prefilled.logits[:, -1]])
    mine = torch.cat([together.logits[: args.rows, -1], together.logits[where[:, -1], -1]])
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
