"""Evaluation generation speed: tunelab's batched generation against transformers `generate`
called one prompt at a time, same model, same prompts, same decoding options, same outputs.

    python benchmarks/eval_generation.py [--config examples/xhosa-lora.yaml] [--examples 40]

The prompts are the config's eval split rendered exactly as a run renders them (the first
`--examples`, as the run's `eval.max_examples` picks them), decoded with the config's `eval`
settings (`eval.decoding()`: the repetition guard, the output repetition penalty, the stop at
a newline resolved against the references, greedy unless sampling is configured).

- tunelab: `tunelab.evaluate.generation.generate`, the function a run's before/after
  evaluation calls, with `eval.batch_size` (or `--batch-size`).
- reference: `model.generate` on one prompt at a time (no padding at all), given the same
  logits processors and stopping criteria, built fresh for each prompt as for each batch.

Both sides run in this process, one after the other (reference first), on `--threads` threads.
Each side's wall time and CPU time (`time.process_time`, this process's threads) are printed;
on a machine shared with other work the CPU-time ratio is the steadier of the two.
Output tokens are the generated tokens up to and including the one that stopped the row (EOS,
or the newline that ends a one-line answer), counted on the reference side; the outputs must
be identical for the ratio to mean anything, so the script prints how many differ and exits 1
when any does. Last line:

    ratio output_tokens_per_s=X.XX per_cpu_s=Y.YY identical=N/M
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from tunelab.data import build_datasets  # noqa: E402
from tunelab.evaluate.decoding import first_line_answer, resolve_options  # noqa: E402
from tunelab.evaluate.generation import (  # noqa: E402
    encode_prompts,
    generate,
    guard_options,
    stop_token_ids,
)
from tunelab.evaluate.modes import inference  # noqa: E402
from tunelab.models import load_model_and_tokenizer  # noqa: E402
from tunelab.run_config import load_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="examples/xhosa-lora.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.name=...")
    parser.add_argument(
        "--examples",
        type=int,
        default=None,
        help="prompts to decode (default: the config's eval.max_examples)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="tunelab's batch size (default: the config's eval.batch_size)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def reference_generate(model, tokenizer, prompts: list[str], max_new_tokens: int, decoding: dict):
    """(outputs, output token counts): `model.generate` on each prompt alone."""
    decoding = dict(decoding)
    guards = (
        decoding.pop("repetition_guard", 0),
        decoding.pop("stop_at_newline", False),
        decoding.pop("output_repetition_penalty", 1.0),
    )
    decoding.pop("seed", None)
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    outputs, counts = [], []
    with inference(model):
        for ids in encode_prompts(tokenizer, prompts):
            tokens = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=int),
                max_new_tokens=max_new_tokens,
                use_cache=True,
                eos_token_id=stop_ids,
                pad_token_id=pad_id,
                **guard_options(tokenizer, [ids], *guards),
                **decoding,
            )[0, len(ids) :].tolist()
            count = next((i + 1 for i, t in enumerate(tokens) if t in stop_ids), len(tokens))
            text = tokenizer.decode(tokens[:count], skip_special_tokens=True).strip()
            outputs.append(first_line_answer(text) if guards[1] else text)
            counts.append(count)
    return outputs, counts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    examples = build_datasets(cfg.data, tokenizer).eval
    examples = examples[: args.examples or cfg.eval.max_examples or len(examples)]
    prompts = [example.prompt for example in examples]
    decoding = resolve_options(cfg.eval.decoding(), [example.response for example in examples])
    max_new_tokens = args.max_new_tokens or cfg.eval.max_new_tokens
    batch_size = args.batch_size or cfg.eval.batch_size
    print(
        f"model {cfg.model.name} · {len(prompts)} prompts · max_new_tokens {max_new_tokens} "
        f"· decoding {decoding} · {args.threads} threads · tunelab batch size {batch_size}"
    )

    wall, cpu = time.perf_counter(), time.process_time()
    expected, counts = reference_generate(model, tokenizer, prompts, max_new_tokens, decoding)
    reference = (time.perf_counter() - wall, time.process_time() - cpu)
    wall, cpu = time.perf_counter(), time.process_time()
    outputs = generate(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, **decoding
    )
    tunelab = (time.perf_counter() - wall, time.process_time() - cpu)

    tokens = sum(counts)
    for side, (seconds, cpu_seconds) in (("reference", reference), ("tunelab", tunelab)):
        print(
            f"{side:9} {seconds:8.2f} s  {tokens / seconds:8.1f} output tokens/s  "
            f"{cpu_seconds:8.2f} CPU s  {tokens / cpu_seconds:8.1f} output tokens per CPU s"
        )
    differ = [i for i, (a, b) in enumerate(zip(expected, outputs, strict=True)) if a != b]
    for index in differ[:5]:
        print(f"differs #{index}: reference {expected[index]!r} · tunelab {outputs[index]!r}")
    print(f"{tokens} output tokens; mean {tokens / len(prompts):.1f}, max {max(counts)} per prompt")
    print(
        f"ratio output_tokens_per_s={reference[0] / tunelab[0]:.2f} "
        f"per_cpu_s={reference[1] / tunelab[1]:.2f} "
        f"identical={len(prompts) - len(differ)}/{len(prompts)}"
    )
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
