"""Every method on the embedded SmolLM2-135M and the English->isiXhosa data: a bounded number
of steps each, dev loss before and after. The methods issue's acceptance check, on CPU.

    python benchmarks/methods_xhosa.py --steps 12 --methods all
Prints one line per method and a last line `lowered=N/M`; writes benchmarks/methods_xhosa.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "xhosa" / "en-xho-aya-style"


def config(method: str, steps: int, output: Path) -> dict:
    return {
        "model": {"name": "embedded:smollm2-135m"},
        "data": {
            "train": str(DATA / "train.jsonl"),
            "eval": str(DATA / "dev.jsonl"),
            "prompt_field": "inputs",
            "response_field": "targets",
            "max_length": 160,
            "max_eval_examples": 32,
        },
        "method": {"name": method},
        "train": {"max_steps": steps, "batch_size": 4, "progress": False, "num_threads": 2},
        "eval": {"metrics": ["loss"]},
        "output_dir": str(output / method),
    }


def main() -> int:
    from tunelab import train
    from tunelab.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--methods", default="all")
    parser.add_argument("--output", type=Path, default=Path("/tmp/tunelab-methods-xhosa"))
    args = parser.parse_args()
    names = list(METHODS) if args.methods == "all" else args.methods.split(",")
    rows = []
    for name in names:
        started = time.perf_counter()
        summary = train(config(name, args.steps, args.output)).summary
        row = {"method": name, "before": summary["before"]["loss"],
               "after": summary["after"]["loss"], "seconds": time.perf_counter() - started,
               "trainable_percent": summary["trainable_percent"]}  # fmt: skip
        rows.append(row)
        share, seconds = row["trainable_percent"], row["seconds"]
        line = f"{name:11s} dev loss {row['before']:.3f} -> {row['after']:.3f}"
        print(f"{line}  ({share:.3f}% trainable, {seconds:.0f} s)", flush=True)
    lowered = sum(row["after"] < row["before"] for row in rows)
    (ROOT / "benchmarks" / "methods_xhosa.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"lowered={lowered}/{len(rows)}")
    return 0 if lowered == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
