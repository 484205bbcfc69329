"""Training throughput and memory: tunelab against the strongest reference a user would pick.

    python benchmarks/throughput.py [--reference fastest] [--method lora] [--fixed-length N] ...

Sides, each trained in its own process (so peak RSS is that side's alone), `--repeats` times in
turn; the figures are medians:

- references (references.py): transformers `Trainer` + PEFT on random padded batches
  (`random`), with length grouping (`grouped`), with padding-free flattening (`flat`), and
  trl's `SFTTrainer` with packing (`trl`, if installed). `--reference fastest` (the default)
  runs every one that applies and takes the ratios against the one with the most tokens/s.
- tunelab (sides.py): `default`, and `no-shared-prefix` (shared-prefix compaction off), so the
  kernel work and the saving that depends on the data show separately (`--tunelab-variants`).

Printed per side: tokens/s (real tokens only: padding never counts), tokens per CPU-second,
peak RSS while training (the loaded model included; with `--device cuda` the GPU's
`max_memory_allocated` instead), the eval loss after training, effective
MFU and true utilisation, the work counted (model tokens, head rows), and the share of the
machine's CPU time the hypervisor gave to other guests while the side trained (`stolen`, from
/proc/stat; a warning names any side above 5 %, whose speed is then not a measurement); then
one line per tunelab variant against the chosen reference:

    ratio tunelab=V reference=R tokens_per_s=X.XX peak_memory=Y.YY eval_loss_delta=Z.ZZZ

(tunelab / reference, tunelab / reference, tunelab - reference).

FLOPs. A linear layer of N weights costs 2·N per row forward, 2·N for the gradient of its
input and 2·N for the gradient of its weight if that trains; N counts every linear layer
(adapters included) and the vocabulary head; attention scores, norms and the optimizer are
left out (a few percent at these lengths).

- effective MFU = real tokens/s × FLOPs a plain implementation spends per real token (every
  position through every layer and the head) / peak. Both sides are credited the same FLOPs
  per token, so work a side skips (padding it never runs, the head on prompt tokens, a shared
  prefix run once) shows as higher effective MFU: it measures speed, not the hardware's use.
- true utilisation = FLOPs actually executed / seconds / peak. Executed FLOPs count, with
  hooks (workcount.py), the tokens that really went through the layers (padding included on the
  reference sides; after shared-prefix compaction on tunelab's) and the positions that really
  went through the vocabulary head (every position for the references; the labelled ones for
  tunelab).

The peak is the best of several (2048, 2048) matmuls timed with torch on the same number
of threads in the same invocation, before and after the sides, since the machine may be shared;
fp32 ones, or bf16 ones with `--precision bf16` (every side then trains under bf16 autocast,
the weights kept in fp32: `bf16=True` for Trainer and trl, `train.precision: bf16` for tunelab).

Methods: every family tunelab has an equivalent for on the reference side. The reference
applies the method with tunelab's own `method.apply` (PEFT's `get_peft_model` for LoRA, DoRA,
IA³, prompt, P-tuning and prefix tuning; plain PyTorch modules and parameters for Houlsby
adapters, BitFit and importance, which Trainer trains like any other), so both sides train the
same parameters from the same start; importance scores its weights on the same calibration
batches on both sides. ULMFiT is left out: its gradual unfreezing and per-layer learning rates
have no Trainer equivalent to compare with.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = "../shared/data/xhosa/en-xho-aya-style/train.jsonl"
METHODS = ("lora", "full", "dora", "ia3", "prompt", "ptuning", "prefix", "adapter", "bitfit",
           "importance")  # fmt: skip
PROMPT_STYLE = ("prompt", "ptuning", "prefix")  # virtual tokens before every row
REFERENCES = ("random", "grouped", "flat", "trl")  # the sides of references.py
VARIANTS = ("default", "no-shared-prefix")  # as sides.TUNELAB_VARIANTS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded:smollm2-135m")
    parser.add_argument("--method", choices=METHODS, default="lora")
    parser.add_argument("--reference", choices=(*REFERENCES, "fastest"), default="fastest",
                        help="reference side; fastest: every one that applies, ratios "
                             "against the fastest")  # fmt: skip
    parser.add_argument("--tunelab-variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")  # fmt: skip
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
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: every side on the GPU (with --precision bf16, as users "
                             "train there); peak memory is max_memory_allocated")  # fmt: skip
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: autocast on every side (fp32 weights); the matmul peak "
                             "is then bf16's")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="runs per side (medians)")
    parser.add_argument("--eval-examples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpointing", action="store_true",
                        help="tunelab side: activation checkpointing")  # fmt: skip
    parser.add_argument("--no-shared-prefix", action="store_true",
                        help="same as --tunelab-variants no-shared-prefix")  # fmt: skip
    parser.add_argument("--side", help=argparse.SUPPRESS)  # reference:NAME or tunelab:VARIANT
    args = parser.parse_args(argv)
    args.variants = ["no-shared-prefix"] if args.no_shared_prefix else [
        name.strip() for name in args.tunelab_variants.split(",") if name.strip()
    ]  # fmt: skip
    unknown = [name for name in args.variants if name not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"--tunelab-variants: {','.join(unknown) or 'none given'}: choose among "
                     f"{', '.join(VARIANTS)}")  # fmt: skip
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU on this machine")
    if args.reference != "fastest" and (why := unavailable(args.reference, args.method)):
        parser.error(f"--reference {args.reference}: {why}")
    return args


def unavailable(reference: str, method: str) -> str | None:
    """Why `reference` cannot run `method` here, or None if it can."""
    if reference in ("flat", "trl") and method in PROMPT_STYLE:
        return f"not with --method {method}: its virtual tokens go before every row"
    if reference == "trl" and importlib.util.find_spec("trl") is None:
        return "trl is not installed (pip install 'tunelab[bench]')"
    return None


def chosen_references(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(references to run, a note for each one left out)."""
    if args.reference != "fastest":
        return [args.reference], []
    run, notes = [], []
    for name in REFERENCES:
        why = unavailable(name, args.method)
        run += [] if why else [name]
        notes += [f"reference {name} left out: {why}"] if why else []
    return run, notes


def matmul_peak_flops(
    threads: int, precision: str = "fp32", size: int = 2048, tries: int = 6, device: str = "cpu"
) -> float:
    """Best FLOP/s of a (size, size) @ (size, size) in `precision` on `threads` threads (on a
    GPU: of ten 8192-wide ones in a row)."""
    from sides import Clock  # benchmarks/ is on sys.path when run as a script

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    size, calls = (8192, 10) if device == "cuda" else (size, 1)
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    a @ b  # warm up
    best = float("inf")
    for _ in range(tries):
        clock = Clock(device)
        for _ in range(calls):
            a @ b
        best = min(best, clock.read()[0])
    return 2 * size**3 * calls / best


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
    for key in ("seconds", "cpu_seconds", "peak_rss_mb", "eval_loss", "stolen_share"):
        result[key] = statistics.median(run[key] for run in runs)
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    result["tokens_per_cpu_s"] = result["tokens"] / result["cpu_seconds"]
    result["all_tokens_per_s"] = [run["tokens"] / run["seconds"] for run in runs]
    return result


def utilisations(result: dict, peak: float) -> tuple[float, float]:
    """(effective MFU, true utilisation) of a side, as the module docstring defines them."""
    effective = result["tokens_per_s"] * result["credited_flops_per_token"] / peak
    return effective, result["executed_flops"] / result["seconds"] / peak


def side_rows(results: dict[str, dict], peak: float) -> list[str]:
    lines = [
        f"{'side':<26} {'tokens/s':>9} {'per CPU-s':>10} {'peak MB':>12} {'eval loss':>10} "
        f"{'eff. MFU':>9} {'true util':>9} {'model tok':>10} {'head rows':>10} {'steps':>6}"
        f" {'stolen':>7}  tokens/s of each run"
    ]
    for side, r in results.items():
        effective, true = utilisations(r, peak)
        runs = " ".join(f"{value:.1f}" for value in r["all_tokens_per_s"])
        lines.append(
            f"{side:<26} {r['tokens_per_s']:>9.1f} {r['tokens_per_cpu_s']:>10.1f} "
            f"{r['peak_rss_mb']:>12.0f} {r['eval_loss']:>10.4f} {effective:>9.1%} {true:>9.1%} "
            f"{r['model_tokens']:>10} {r['head_rows']:>10} {r['steps']:>6} "
            f"{r['stolen_share']:>7.1%}  {runs}"
        )
    return lines


def ratio_line(ours: dict, ref: dict, variant: str, reference: str) -> str:
    return (
        f"ratio tunelab={variant} reference={reference} "
        f"tokens_per_s={ours['tokens_per_s'] / ref['tokens_per_s']:.2f} "
        f"peak_memory={ours['peak_rss_mb'] / ref['peak_rss_mb']:.2f} "
        f"eval_loss_delta={ours['eval_loss'] - ref['eval_loss']:.3f}"
    )


STOLEN_LIMIT = 0.05  # of the machine's CPU time, above which a side's speed is not quoted


def report(args: argparse.Namespace, results: dict[str, dict], peak: float) -> list[str]:
    references = [side for side in results if side.startswith("reference:")]
    variants = [side for side in results if side.startswith("tunelab:")]
    first = results[references[0]]
    shape = f"fixed length {args.fixed_length}" if args.fixed_length else "variable length"
    lines = [
        f"model {args.model}  method {args.method}  lr {first['lr']:g}  data {args.data} ({shape})",
        f"{first['examples']} examples, {first['tokens']} real tokens, {args.steps} steps × "
        f"batch {args.batch_size}; {args.device}, threads {args.threads}; {args.precision}, "
        f"matmul peak {peak / 1e9:.1f} GFLOP/s; peak MB: "
        + ("torch.cuda.max_memory_allocated" if args.device == "cuda" else "peak RSS of the side"),
        *side_rows(results, peak),
    ]
    disturbed = [side for side, r in results.items() if r["stolen_share"] > STOLEN_LIMIT]
    if disturbed:
        lines.append(
            f"warning: the hypervisor gave more than {STOLEN_LIMIT:.0%} of this machine's CPU time "
            f"to other guests while {', '.join(disturbed)} trained ('stolen'); those sides ran "
            "slower for it and these ratios are not a measurement: rerun when the host is quiet"
        )
    fastest = max(references, key=lambda side: results[side]["tokens_per_s"])
    if args.reference == "fastest":
        lines.append(f"fastest reference: {fastest.split(':')[1]}")
    for variant in variants:
        for side in references:
            lines.append(f"  {ratio_line(results[variant], results[side], variant[8:], side[10:])}")
    lines += [ratio_line(results[v], results[fastest], v[8:], fastest[10:]) for v in variants]
    return lines


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.side:
        from sides import run_side  # benchmarks/ is on sys.path when run as a script

        run_side(args)
        return
    references, notes = chosen_references(args)
    sides = [f"reference:{name}" for name in references]
    sides += [f"tunelab:{variant}" for variant in args.variants]
    peak = matmul_peak_flops(args.threads, args.precision, device=args.device)
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for _ in range(args.repeats):
        for side in sides:
            runs[side].append(run_side_process(side, argv, args.threads))
    peak = max(peak, matmul_peak_flops(args.threads, args.precision, device=args.device))
    results = {side: median_result(side_runs) for side, side_runs in runs.items()}
    print("\n".join([*notes, *report(args, results, peak)]), flush=True)


if __name__ == "__main__":
    main()
