"""GGUF export of the embedded SmolLM2-135M: file size and write time per dtype, and the
perplexity of each file (read back by transformers' GGUF loader) against the merged f32 model.

    python benchmarks/export_gguf.py [--run RUN] [--pairs 50] [--out outputs/export-gguf]

Without --run, a 5-step LoRA run on English→isiXhosa pairs is trained first (a few minutes on
two CPU cores). Perplexity: next-token loss on the reference isiXhosa translation only (the
prompt is rendered as the run renders it, and not scored), over the first --pairs rows of the
en-xho-aya-style dev split. Prints a markdown table; writes results.json into --out.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tunelab import train
from tunelab.data.templates import render_prompt
from tunelab.export.gguf_file import write_gguf
from tunelab.export.merge import merged_model
from tunelab.export.vocab import pre_tokenizer_name

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "xhosa" / "en-xho-aya-style"
DTYPES = ("q8_0", "f16", "f32")


def short_run(out: Path) -> Path:
    config = {
        "model": {"name": "embedded:smollm2-135m"},
        "data": {"train": str(DATA / "train.jsonl"), "prompt_field": "inputs",
                 "response_field": "targets", "max_length": 128, "max_train_examples": 40,
                 "max_eval_examples": 8},
        "method": {"name": "lora"},
        "train": {"max_steps": 5, "batch_size": 4, "progress": False},
        "eval": {"before": False, "metrics": ["loss"]},
        "output_dir": str(out / "run"),
    }  # fmt: skip
    return train(config).run_dir


def scored_rows(tokenizer, data_cfg, pairs: int) -> list[tuple[list[int], int]]:
    """(ids of prompt + reference + EOS, number of prompt ids) for the first `pairs` dev rows."""
    rows = []
    with open(DATA / "dev.jsonl", encoding="utf-8") as handle:
        for line in list(handle)[:pairs]:
            row = json.loads(line)
            prompt = tokenizer(render_prompt(row["inputs"], tokenizer, data_cfg),
                               add_special_tokens=False)["input_ids"]  # fmt: skip
            answer = tokenizer(row["targets"], add_special_tokens=False)["input_ids"]
            rows.append((prompt + answer + [tokenizer.eos_token_id], len(prompt)))
    return rows


def perplexity(model, rows) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, start in rows:
            logits = model(torch.tensor([ids])).logits[0, start - 1 : -1]  # predicts ids[start:]
            target = torch.tensor(ids[start:])
            total += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
            count += len(target)
    return math.exp(total / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="an existing run (default: train a short one)")
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated")
    parser.add_argument("--out", type=Path, default=Path("outputs/export-gguf"))
    args = parser.parse_args()
    run = args.run or short_run(args.out)
    merged, tokenizer, cfg = merged_model(run)
    rows = scored_rows(tokenizer, cfg.data, args.pairs)
    reference = perplexity(merged, rows)
    print(f"merged perplexity {reference:.4f}", flush=True)
    results = {"run": str(run), "pairs": args.pairs, "merged_perplexity": reference, "files": {}}
    metadata = {"method": cfg.method.name, "run": run.resolve().name, "base_model": cfg.model.name}
    pre = pre_tokenizer_name(cfg.model.name, tokenizer)
    for dtype in args.dtypes.split(","):
        path = args.out / f"smollm2-{dtype}.gguf"
        path.unlink(missing_ok=True)
        started = time.perf_counter()  # the merged model is loaded once; this times the writing
        write_gguf(merged, tokenizer, metadata, path, dtype=dtype, pre=pre)
        seconds = time.perf_counter() - started
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32).eval()  # fmt: skip
        value = perplexity(model, rows)
        change = value / reference - 1
        results["files"][dtype] = {"bytes": path.stat().st_size, "export_seconds": seconds,
                                   "perplexity": value, "change": change}  # fmt: skip
        print(f"{dtype}: {results['files'][dtype]}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"merged model (f32, in memory): perplexity {reference:.4f} on {args.pairs} dev pairs")
    print("| dtype | file size | write time | perplexity | change |")
    print("|---|---|---|---|---|")
    for dtype, item in results["files"].items():
        print(f"| {dtype} | {item['bytes'] / 1e6:.1f} MB | {item['export_seconds']:.1f} s | "
              f"{item['perplexity']:.4f} | {100 * item['change']:+.3f} % |")  # fmt: skip


if __name__ == "__main__":
    main()
