"""Where a serving step's CPU time goes, and what folding prefills into decoding steps would save.

    python benchmarks/profile_serve_step.py [MODEL] [--rows 7] [--steps 20]
    (default embedded:smollm2-135m; random:llama for a tiny model; run from the repository root)

One thread, process CPU time (so that other load on a shared machine barely moves it), best of a
few tries. Prints:

1. the engine's decoding step (`RunningBatch.step`: forward, row guards, argmax, each job's text
   and stop checks, cache bookkeeping) against a bare forward of the same shapes: the difference
   is all the engine adds per step;
2. the forward's cost by shape (rows B x new tokens T, 60 tokens already cached): a decoding
   step is (B, 1), a joining prefill (B, T). Folding a prefill into a step *padded* costs
   (B_old + B_new, T); *packed* (ragged, one row of every new token) it would cost about
   fixed + per-token x (B_old + B_new x T); the fit of fixed and per-token printed last says
   what each would save against a step plus a separate prefill.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import DynamicCache

from tunelab.config import DataConfig
from tunelab.data.templates import render_prompt
from tunelab.evaluate.generation import encode_prompts
from tunelab.evaluate.modes import inference
from tunelab.serve.adapters import AdapterSet
from tunelab.serve.batch import RunningBatch, Stats
from tunelab.serve.engine import Job, Wordlike

CACHED = 60  # tokens in the cache before the measured forward
SHAPES = [(1, 1), (7, 1), (2, 16), (9, 16), (7, 4), (9, 4), (2, 8), (9, 8)]


def step_cost(served: AdapterSet, rows: int, steps: int) -> tuple[float, float]:
    """(CPU ms per `RunningBatch.step` with `rows` rows, CPU ms per bare forward of its shapes)."""
    tok = served.tokenizer
    texts = [render_prompt(f"Tell me about item {i} and its story", tok, DataConfig())
             for i in range(rows)]  # fmt: skip
    options = {"no_repeat_ngram_size": 3}  # as benchmarks/serve.py decodes
    jobs = [Job("base", ids, 10**6, emit=lambda event: None, decoding=dict(options))
            for ids in encode_prompts(tok, texts)]  # fmt: skip
    batch = RunningBatch(served.base, tok, Wordlike(tok), Stats())
    with inference(served.base):
        batch.join(jobs)
        batch.step()  # warm
        start = time.process_time()
        for _ in range(steps):
            batch.step()
        engine = (time.process_time() - start) / steps
        mask = torch.cat([batch.mask, torch.ones(rows, 1, dtype=torch.long)], dim=1)
        positions = mask.sum(dim=1, keepdim=True) - 1
        start = time.process_time()
        for _ in range(steps):  # no cache: the same shapes, nothing appended
            served.base(input_ids=batch.last[:, None], attention_mask=mask,
                        position_ids=positions, past_key_values=_frozen(batch.cache),
                        use_cache=False, logits_to_keep=1)  # fmt: skip
        bare = (time.process_time() - start) / steps
    return engine * 1e3, bare * 1e3


def _frozen(cache: DynamicCache) -> DynamicCache:
    """A cache with the same K/V whose updates do not touch `cache`."""
    copy = DynamicCache(config=None)
    for index, layer in enumerate(cache.layers):
        copy.update(layer.keys, layer.values, index)
    return copy


def shape_cost(model, rows: int, tokens: int, tries: int = 3) -> float:
    """CPU ms of one forward of `rows` x `tokens` new tokens on `CACHED` cached ones."""
    best = float("inf")
    with inference(model):
        for _ in range(tries):
            cache = DynamicCache(config=model.config)
            model(input_ids=torch.randint(5, 100, (rows, CACHED)), past_key_values=cache,
                  use_cache=True, logits_to_keep=1)  # fmt: skip
            mask = torch.ones(rows, CACHED + tokens, dtype=torch.long)
            positions = torch.arange(CACHED, CACHED + tokens)[None].expand(rows, tokens)
            start = time.process_time()
            model(input_ids=torch.randint(5, 100, (rows, tokens)), attention_mask=mask,
                  position_ids=positions, past_key_values=cache, use_cache=True,
                  logits_to_keep=1)  # fmt: skip
            best = min(best, time.process_time() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", default="embedded:smollm2-135m")
    parser.add_argument("--rows", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    served = AdapterSet(args.model)
    engine, bare = step_cost(served, args.rows, args.steps)
    print(f"{args.model}, {args.rows} rows: engine step {engine:.2f} CPU ms, bare forward "
          f"{bare:.2f} ms, engine's own work {engine - bare:.2f} ms "
          f"({(engine - bare) / engine:.1%})")  # fmt: skip
    costs = {shape: shape_cost(served.base, *shape) for shape in SHAPES}
    for (rows, tokens), cost in costs.items():
        print(f"forward of {rows} rows x {tokens} new tokens: {cost:.1f} CPU ms")
    # least squares over the shapes: cost ~ fixed + per_token * rows * tokens
    x = torch.tensor([[1.0, rows * tokens] for rows, tokens in costs], dtype=torch.float64)
    y = torch.tensor(list(costs.values()), dtype=torch.float64)[:, None]
    fixed, per_token = torch.linalg.lstsq(x, y).solution.flatten().tolist()
    print(f"fit: {fixed:.1f} ms per forward + {per_token:.2f} ms per token")
    for new, tokens in ((2, 16), (2, 8), (2, 4)):
        separate = costs[(7, 1)] + costs.get((new, tokens), fixed + per_token * new * tokens)
        padded = costs.get((7 + new, tokens))
        packed = fixed + per_token * (7 + new * tokens)
        print(f"7 decoding rows + {new} prompts of {tokens}: step + prefill {separate:.1f} ms, "
              f"padded into one {padded:.1f} ms, packed (estimate) {packed:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
