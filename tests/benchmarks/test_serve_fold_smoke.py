"""benchmarks/profile_serve_fold.py on random:llama: the folded forward (decoding rows and
joining prompt tokens as one batch of one-token rows, attention in two groups) gives the logits
of a separate step and prefill to float32 rounding, the same greedy tokens, and timings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_folded_forward_matches_a_step_and_a_prefill(capsys):
    spec = importlib.util.spec_from_file_location(
        "profile_serve_fold", ROOT / "benchmarks" / "profile_serve_fold.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()  # the script sets it: leave the process as it was
    try:
        figures = module.main(["random:llama", "--rows", "5", "--tries", "1",
                               "--threads", str(threads)])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert figures["tokens_agree"] and figures["max_logit_diff"] < 1e-4
    assert min(figures["step_ms"], figures["prefill_ms"], figures["folded_ms"]) > 0
    assert "5 decoding rows + prompts of" in capsys.readouterr().out
