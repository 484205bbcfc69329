"""`kill -9` at random moments of real training processes, then resume: every run finishes and
its final weights are bit-identical to an uninterrupted run (CPU, same seed) — for LoRA, full
fine-tuning and ULMFiT (whose trainable set changes during training). 10 kills in all; the
moments are drawn from a seeded RNG over the reference run's duration (kill_harness.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("kill_harness.py")
KILLS = {"lora": 4, "full": 3, "ulmfit": 3}


def kill_config(method: str) -> dict:
    return {
        "model": {"name": "random:llama"},
        "data": {"train": "builtin:reverse", "eval": "builtin:reverse", "builtin_size": 40,
                 "max_eval_examples": 4, "max_length": 64},
        "method": {"name": method, **({"unfreeze_every": 2} if method == "ulmfit" else {})},
        "train": {"max_steps": 8, "batch_size": 4, "lr": 3e-3, "log_every": 1, "save_every": 1,
                  "eval_every": 3, "progress": False, "num_threads": 1},
        "eval": {"metrics": ["loss"], "before": True},
    }  # fmt: skip


def weights(run: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted((run / "adapter").glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


@pytest.mark.timeout(240)
def test_kill_9_then_resume_ends_bit_identical(tmp_path):
    runs = {method: {"config": kill_config(method), "kills": kills, "seed": index}
            for index, (method, kills) in enumerate(KILLS.items())}  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps({"root": str(tmp_path), "runs": runs}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(HARNESS), str(tmp_path / "spec.json"), str(tmp_path / "out.json")],
        env=env, capture_output=True, text=True, timeout=220,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out.json").read_text())
    assert sum(len(result["kills"]) for result in results.values()) >= 10
    for method, result in results.items():
        assert len(result["kills"]) >= KILLS[method]
        expected = weights(Path(result["reference"]))
        assert expected, method
        for run in map(Path, result["experiments"]):
            summary = json.loads((run / "summary.json").read_text())
            assert summary["steps"] == 8
            assert not (run / "checkpoints").exists(), run
            actual = weights(run)
            assert actual.keys() == expected.keys(), run
            for name in expected:
                assert torch.equal(actual[name], expected[name]), (run, name, result["kills"])
