"""Training throughput and memory: tunelab against transformers Trainer + PEFT, same work.

    python benchmarks/throughput.py [--method lora|full] [--fixed-length N] [--steps 30] ...

Each side trains in its own process (so peak RSS is that side's alone), `--repeats` times,
alternating reference, tunelab, reference, tunelab, ...; the figures are medians. Printed per
side: effective tokens/s (real tokens only: padding is never counted), peak RSS while training
(the loaded model included), the eval loss after training, and MFU; then the last line

    ratio_tokens_per_s=X.XX ratio_peak_memory=Y.YY eval_loss_delta=Z.ZZZ

(tunelab / reference, tunelab / reference, tunelab - reference).

MFU = tokens/s × FLOPs per token / peak FLOP/s. FLOPs per token count the matrix multiplies
of a plain implementation: 2·N forward, 2·N for the gradient with respect to activations, and
2·N_trainable for the gradient with respect to weights, where N is every linear layer's weight
count including the vocabulary head (full fine-tuning: 6·N; LoRA: about 4·N) — attention
scores, norms and the optimizer are left out (a few percent at these lengths). Both sides are
credited the same FLOPs per token, so work tunelab skips (the head on prompt tokens, padding)
shows as higher MFU, as it should. The peak is the best of several fp32 (2048, 2048) matmuls
timed with torch on the same number of threads in the same invocation, before and after the
sides, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = "../shared/data/xhosa/en-xho-aya-style/train.jsonl"
SIDE_ORDER = ("reference", "tunelab")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded:smollm2-135m")
    parser.add_argument("--method", choices=("lora", "full"), default="lora")
    parser.add_argument("--data", default=DEFAULT_DATA, help="jsonl with prompt/response fields")
    parser.add_argument("--prompt-field", default="inputs")
    parser.add_argument("--response-field", default="targets")
    parser.add_argument("--fixed-length", type=int, default=None, metavar="N",
                        help="every example N tokens (cut longer, drop shorter)")  # fmt: skip
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per side")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step")
    parser.add_argument("--lr", type=float, default=None, help="default: tunelab's for the method")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs per side (medians)")
    parser.add_argument("--eval-examples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpointing", action="store_true",
                        help="tunelab side: activation checkpointing")  # fmt: skip
    parser.add_argument("--no-shared-prefix", action="store_true",
                        help="tunelab side: no shared-prefix compaction")  # fmt: skip
    parser.add_argument("--side", choices=SIDE_ORDER, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def matmul_peak_flops(threads: int, size: int = 2048, tries: int = 6) -> float:
    """Best FLOP/s of an fp32 (size, size) @ (size, size) on `threads` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm up
    best = float("inf")
    for _ in range(tries):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def run_side_process(side: str, argv: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}  # fmt: skip
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--side", side]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=Path.cwd())
    if done.returncode != 0:
        sys.exit(f"{side} side failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_result(runs: list[dict]) -> dict:
    result = dict(runs[-1])
    for key in ("seconds", "cpu_seconds", "peak_rss_mb", "eval_loss"):
        result[key] = statistics.median(run[key] for run in runs)
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    result["tokens_per_cpu_s"] = result["tokens"] / result["cpu_seconds"]
    result["all_tokens_per_s"] = [run["tokens"] / run["seconds"] for run in runs]
    return result


def flops_per_token(result: dict) -> float:
    return 4 * result["matmul_params"] + 2 * result["trainable_matmul_params"]


def report(args: argparse.Namespace, results: dict[str, dict], peak: float) -> list[str]:
    ref, ours = results["reference"], results["tunelab"]
    shape = f"fixed length {args.fixed_length}" if args.fixed_length else "variable length"
    lines = [
        f"model {args.model}  method {args.method}  lr {ref['lr']:g}  data {args.data} ({shape})",
        f"{ref['examples']} examples, {ref['tokens']} real tokens, {args.steps} steps × "
        f"batch {args.batch_size}; threads {args.threads}; matmul peak {peak / 1e9:.1f} GFLOP/s",
        f"{'side':<10} {'tokens/s':>9} {'per CPU-s':>10} {'peak RSS MB':>12} {'eval loss':>10} "
        f"{'MFU':>6} {'steps':>6}  tokens/s of each run",
    ]
    for side in SIDE_ORDER:
        r = results[side]
        mfu = r["tokens_per_s"] * flops_per_token(r) / peak
        runs = " ".join(f"{value:.1f}" for value in r["all_tokens_per_s"])
        lines.append(
            f"{side:<10} {r['tokens_per_s']:>9.1f} {r['tokens_per_cpu_s']:>10.1f} "
            f"{r['peak_rss_mb']:>12.0f} {r['eval_loss']:>10.4f} {mfu:>6.1%} {r['steps']:>6}  {runs}"
        )
    cpu_ratio = ours["tokens_per_cpu_s"] / ref["tokens_per_cpu_s"]
    lines.append(f"tokens per CPU-second, tunelab / reference: {cpu_ratio:.2f}")
    lines.append(
        f"ratio_tokens_per_s={ours['tokens_per_s'] / ref['tokens_per_s']:.2f} "
        f"ratio_peak_memory={ours['peak_rss_mb'] / ref['peak_rss_mb']:.2f} "
        f"eval_loss_delta={ours['eval_loss'] - ref['eval_loss']:.3f}"
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.side:
        from sides import run_side  # benchmarks/ is on sys.path when run as a script

        run_side(args)
        return
    peak = matmul_peak_flops(args.threads)
    runs: dict[str, list[dict]] = {side: [] for side in SIDE_ORDER}
    for _ in range(args.repeats):
        for side in SIDE_ORDER:
            runs[side].append(run_side_process(side, argv, args.threads))
    peak = max(peak, matmul_peak_flops(args.threads))
    results = {side: median_result(side_runs) for side, side_runs in runs.items()}
    print("\n".join(report(args, results, peak)), flush=True)


if __name__ == "__main__":
    main()
