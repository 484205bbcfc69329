"""Where a tunelab training step's CPU time goes, by op (torch.profiler, self CPU time).

    python benchmarks/profile_step.py [METHOD] [--bf16]    (lora, fp32 by default; repo root)

Trains 7 steps of 8 Xhosa pairs (packed) on the embedded model with 2 threads, profiles steps
3-6, and prints the top ops, the shares of matmuls and attention, and the matmuls split into
full-width products and low-rank ones (a dimension <= 16: LoRA's A and B) with the GFLOP/s
each reached. Run it on an otherwise idle machine (benchmarks/RESULTS.md says why). Writes
only to a temporary folder.
"""

from __future__ import annotations

import collections
import json
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from tunelab import train

MATMULS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm")


def config(method: str, output_dir: str, precision: str = "fp32") -> dict:
    settings = {"r": 8, "alpha": 16} if method == "lora" else {}
    return {
        "model": {"name": "embedded:smollm2-135m"},
        "data": {"train": "../shared/data/xhosa/en-xho-aya-style/train.jsonl", "format": "pairs",
                 "prompt_field": "inputs", "response_field": "targets", "max_length": 192,
                 "max_train_examples": 200, "eval_fraction": 0.0},
        "method": {"name": method, **settings},
        "train": {"max_steps": 7, "batch_size": 8, "lr": 1e-3, "progress": False,
                  "num_threads": 2, "precision": precision},
        "eval": {"before": False, "metrics": ["loss"]},
        "output_dir": output_dir,
    }  # fmt: skip


def profiled_steps(method: str, precision: str):
    """(op averages, op averages by input shape) over steps 3-6 of a short run."""
    traces = []
    prof = profile(
        activities=[ProfilerActivity.CPU],
        schedule=schedule(wait=1, warmup=1, active=4),
        record_shapes=True,
        on_trace_ready=lambda p: traces.append(
            (p.key_averages(), p.key_averages(group_by_input_shape=True))
        ),
    )
    with tempfile.TemporaryDirectory() as folder:
        prof.start()
        train(config(method, folder + "/run", precision), on_step=lambda step: prof.step())
        prof.stop()
    return traces[0]


def matmul_split(shaped) -> dict[str, list[float]]:
    """{kind: [ms, calls, flops]} for full-width and low-rank matmuls."""
    split = collections.defaultdict(lambda: [0.0, 0, 0.0])
    for row in shaped:
        dims = [d for d in row.input_shapes if d and len(d) == 2]
        if row.key not in MATMULS or len(dims) < 2:
            continue
        (m, k), (_, n) = dims[-2], dims[-1]
        kind = "low-rank (a dim <= 16)" if min(m, k, n) <= 16 else "full-width"
        split[kind][0] += row.self_cpu_time_total / 1e3
        split[kind][1] += row.count
        split[kind][2] += 2.0 * m * k * n * row.count
    return split


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--bf16"]
    method = args[0] if args else "lora"
    torch.set_num_threads(2)
    rows, shaped = profiled_steps(method, "bf16" if "--bf16" in sys.argv else "fp32")
    total = sum(row.self_cpu_time_total for row in rows)
    for row in sorted(rows, key=lambda r: -r.self_cpu_time_total)[:20]:
        share = 100 * row.self_cpu_time_total / total
        print(f"{row.key:60s} {row.self_cpu_time_total / 1e3:9.1f} ms {share:5.1f} %")
    matmul = sum(row.self_cpu_time_total for row in rows if row.key in MATMULS)
    attention = sum(row.self_cpu_time_total for row in rows if "scaled_dot_product" in row.key)
    print(json.dumps({"total_ms": total / 1e3, "matmul_share": matmul / total,
                      "attention_share": attention / total}))  # fmt: skip
    for kind, (ms, calls, flops) in matmul_split(shaped).items():
        print(f"{kind:24s} {ms:9.1f} ms  calls {calls:5d}  GFLOP/s {flops / ms / 1e6:7.1f}")


if __name__ == "__main__":
    main()
