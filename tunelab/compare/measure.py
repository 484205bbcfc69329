"""Measurements beyond the run's own summary: forgetting (probe perplexity) and inference cost.

The probe perplexity of a trained run is usually in its summary already: the loop's forgetting
probe `english_perplexity` is the same computation as `probe_perplexity` (`probe_batches` of
`PROBE_TEXT`, mean token loss, exp) on the trained model, which save -> load reproduces. So
`measure_run` reads it from summary.json (`forgetting.english_perplexity.after`) and computes it
only where the loop did not (`eval.forgetting` off) or scored another text
(`eval.forgetting_text`); `probe_source` says which. Merging is not probed: it is checked to
reproduce the logits elsewhere (tests/methods), and here only its speed is measured.

Inference cost is wall time per generated token through the serving path
(`tunelab.evaluate.generate`: greedy, KV cache, batch of one), with every prompt forced to
exactly `tokens` new tokens (`min_new_tokens` on the generation config), so an early EOS
cannot flatter a method. Prefill is included, amortised over the new tokens. The fastest of a
few rounds is kept: on a shared machine the minimum is the least noisy estimate. A method that
folds into the weights (`method.mergeable`) is timed merged too: merging is what removes an
adapter's extra work at inference. Where this run cannot merge (BitFit's added biases on an
architecture whose config cannot declare them), the merged time is None and `merge_note` says
why: the trained run itself is fine.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.data.templates import render_prompt
from tunelab.errors import MergeNotSupported
from tunelab.evaluate import generate
from tunelab.evaluate.probe import probe_perplexity
from tunelab.run import RunFiles
from tunelab.run_config import RunConfig, load_config

TIMING_PROMPTS = ("Write one sentence about the sea.", "Describe a quiet morning in a town.")
ROUNDS = 3


def ms_per_token(model, tokenizer, cfg: RunConfig, tokens: int, rounds: int = ROUNDS) -> float:
    """Milliseconds per generated token, `tokens` new tokens per prompt: after a warm-up, the
    fastest of `rounds` passes over the prompts (the least disturbed by other processes)."""
    prompts = [render_prompt(text, tokenizer, cfg.data) for text in TIMING_PROMPTS]
    timings = []
    with forced_length(model, tokens):
        generate(model, tokenizer, prompts[:1], max_new_tokens=tokens, batch_size=1)  # warm-up
        for _ in range(rounds):
            started = time.perf_counter()
            for prompt in prompts:
                generate(model, tokenizer, [prompt], max_new_tokens=tokens, batch_size=1)
            timings.append(time.perf_counter() - started)
    return 1000.0 * min(timings) / (tokens * len(prompts))


@contextmanager
def forced_length(model, tokens: int):
    """Set `min_new_tokens` on the generation configs `generate` reads, restore afterwards."""
    configs = {id(c): c for c in _generation_configs(model)}.values()
    saved = [(config, config.min_new_tokens) for config in configs]
    try:
        for config in configs:
            config.min_new_tokens = tokens
        yield
    finally:
        for config, value in saved:
            config.min_new_tokens = value


def _generation_configs(model) -> list:
    found = [getattr(model, "generation_config", None)]
    if hasattr(model, "get_base_model"):
        found.append(getattr(model.get_base_model(), "generation_config", None))
    return [config for config in found if config is not None]


def measure_base(cfg: RunConfig, tokens: int) -> dict[str, Any]:
    """Probe perplexity and inference cost of the untouched base model."""
    from tunelab.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(cfg.model)
    model.eval()
    return {
        "model": cfg.model.name,
        "probe_perplexity": probe_perplexity(model, tokenizer),
        "inference_ms_per_token": ms_per_token(model, tokenizer, cfg, tokens),
    }


def measure_run(run_dir, cfg: RunConfig, tokens: int) -> dict[str, Any]:
    """Probe perplexity and inference cost of a finished run, unmerged and (if it can) merged."""
    from tunelab.methods import get_method
    from tunelab.run import load_run

    model, tokenizer = load_run(run_dir)
    method = get_method(cfg.method.name)
    stored = stored_probe_perplexity(run_dir)
    result: dict[str, Any] = {
        "probe_perplexity": probe_perplexity(model, tokenizer) if stored is None else stored,
        "probe_source": "measured" if stored is None else "summary.json",
        "inference_ms_per_token": ms_per_token(model, tokenizer, cfg, tokens),
        "merged_inference_ms_per_token": None,
    }
    if method.mergeable:
        try:
            merged = method.merge(model, cfg.method)
        except MergeNotSupported as err:  # e.g. BitFit's added biases on Gemma: the run stands
            result["merge_note"] = str(err)
            return result
        merged.eval()
        result["merged_inference_ms_per_token"] = ms_per_token(merged, tokenizer, cfg, tokens)
    return result


def stored_probe_perplexity(run_dir) -> float | None:
    """The run's own English probe perplexity after training, as its summary.json holds it
    (`forgetting.english_perplexity.after`); None where the loop did not score `PROBE_TEXT`
    (`eval.forgetting` off, `eval.forgetting_text` set) or the run has no summary."""
    files = RunFiles(Path(run_dir))
    if not files.summary.exists() or load_config(files.config).eval.forgetting_text is not None:
        return None
    probe = (files.read_summary().get("forgetting") or {}).get("english_perplexity") or {}
    after = probe.get("after")
    return float(after) if isinstance(after, int | float) else None
