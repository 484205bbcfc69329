"""Old vs new decoding defaults on a trained run's dev split: chrF++ and BLEU with bootstrap
95 % intervals, the paired test against plain greedy, seq-rep-4, distinct-2, length ratio.

    python benchmarks/decoding_xhosa.py RUN [--examples 40] [--base] [--settings 0 2 ...]

RUN is a finished run (e.g. `tunelab train examples/xhosa-lora.yaml ...`). Each setting
decodes the same first N dev examples; the run directory is not changed. `--base` also scores
the untouched base model. Prints a line per setting and writes RUN/../decoding-benchmark-*.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tunelab.config import EvalConfig
from tunelab.data import build_datasets
from tunelab.evaluate import evaluate_with_predictions
from tunelab.evaluate.generation_report import compare_samples, describe_outputs
from tunelab.models import load_model_and_tokenizer
from tunelab.run import load_run, read_run_config

SETTINGS = {  # complete settings: EvalConfig defaults change, these stay as measured
    "plain greedy (old default)": {
        "repetition_guard": 0, "output_repetition_penalty": 1.0, "stop_at_newline": False,
    },
    "no_repeat 3 + penalty 1.2 (old example)": {
        "repetition_guard": 0, "output_repetition_penalty": 1.0, "stop_at_newline": False,
        "no_repeat_ngram_size": 3, "repetition_penalty": 1.2,
    },
    "guard 4, newline stop auto": {
        "repetition_guard": 4, "output_repetition_penalty": 1.0, "stop_at_newline": "auto",
    },
    "guard 3 + output penalty 1.2, newline stop auto": {
        "repetition_guard": 3, "output_repetition_penalty": 1.2, "stop_at_newline": "auto",
    },
    "guard 4 + output penalty 1.2, newline stop auto (new default)": {
        "repetition_guard": 4, "output_repetition_penalty": 1.2, "stop_at_newline": "auto",
    },
}  # fmt: skip
METRICS = ["chrf++", "bleu"]


def score(model, tokenizer, dev, cfg, settings: dict) -> tuple[dict, list[dict], float]:
    options = EvalConfig(**settings).decoding()
    started = time.perf_counter()
    _, samples = evaluate_with_predictions(
        model, tokenizer, dev, METRICS, loss_batches=None, max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size, decoding=options,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    return (
        describe_outputs(samples, METRICS, resamples=1000, seed=0, confidence=0.95),
        samples,
        seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--examples", type=int, default=40)
    parser.add_argument("--base", action="store_true", help="also score the base model")
    parser.add_argument(
        "--settings",
        nargs="+",
        type=int,
        help="indices into SETTINGS (default: all); the "
        "first one run is the reference of the paired test",
    )
    args = parser.parse_args()
    cfg = read_run_config(args.run)
    models = {"run": load_run(args.run)}
    if args.base:
        models["base"] = load_model_and_tokenizer(cfg.model)
    dev = build_datasets(cfg.data, models["run"][1]).eval[: args.examples]
    results = {}
    for which, (model, tokenizer) in models.items():
        reference = None
        chosen = [list(SETTINGS)[i] for i in args.settings] if args.settings else list(SETTINGS)
        for name in chosen:
            settings = SETTINGS[name]
            figures, samples, seconds = score(model, tokenizer, dev, cfg, settings)
            if reference is None:
                reference = samples
            paired = compare_samples(reference, samples, METRICS, resamples=1000, seed=0)
            label = f"{which} · {name}"
            results[label] = {**figures, "seconds": seconds, "paired_vs_plain": paired}
            results[label]["samples"] = samples
            report(label, results[label])
    out = args.run.parent / f"decoding-benchmark-{'-'.join(map(str, args.settings or []))}.json"
    out.write_text(json.dumps({"examples": len(dev), "results": results}, indent=1,
                              ensure_ascii=False))  # fmt: skip
    print(f"written {out}")


def report(label: str, figures: dict) -> None:
    chrf, bleu = figures["chrf++"], figures["bleu"]
    delta = figures["paired_vs_plain"]["chrf++"]
    print(
        f"{label:58} chrF++ {chrf['score']:5.2f} [{chrf['low']:5.2f}, {chrf['high']:5.2f}]"
        f"  BLEU {bleu['score']:5.2f} [{bleu['low']:5.2f}, {bleu['high']:5.2f}]"
        f"  Δ {delta['delta']:+5.2f} [{delta['low']:+5.2f}, {delta['high']:+5.2f}]"
        f" p {delta['p_value']:.3f}"
        f"  seq-rep-4 {figures['seq-rep-4']:5.1f}  distinct-2 {figures['distinct-2']:5.1f}"
        f"  len {figures['length_ratio']:.2f}  {figures['seconds']:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
