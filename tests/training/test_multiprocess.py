"""Multi-process data parallelism through `accelerate launch` (two CPU processes, gloo)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml


def test_two_process_launch_trains_and_writes_once(tmp_path):
    config = {
        "model": {"name": "random:llama"},
        "data": {
            "train": "builtin:reverse",
            "eval": "builtin:reverse",
            "builtin_size": 64,
            "max_eval_examples": 4,
        },  # fmt: skip
        "method": {"name": "lora"},
        "train": {
            "max_steps": 3,
            "batch_size": 4,
            "progress": False,
            "log_every": 1,
            "num_threads": 1,
        },  # fmt: skip
        "eval": {"metrics": ["loss"]},
        "output_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "tunelab.cli", "train", str(path)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert steps == [1, 2, 3]  # one writer, not two
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
