"""A tiny run of benchmarks/throughput.py (random:llama, three steps per side): it completes,
and its last line has the documented format with sane values."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAST_LINE = re.compile(
    r"^ratio_tokens_per_s=(\d+\.\d\d) ratio_peak_memory=(\d+\.\d\d) eval_loss_delta=(-?\d+\.\d{3})$"
)


def write_pairs(path: Path, count: int = 40) -> None:
    """Translation-like rows of varied length, with the benchmark's default field names."""
    words = ["ilanga", "amanzi", "umntu", "indlu", "inja", "ikati", "umthi", "incwadi"]
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            size = 2 + index % 7
            english = " ".join(f"word{(index + k) % 11}" for k in range(size))
            xhosa = " ".join(words[(index + k) % len(words)] for k in range(size + 1))
            row = {"inputs": f"Translate into isiXhosa.\n\n{english}", "targets": xhosa}
            handle.write(json.dumps(row) + "\n")


def test_smoke_run_prints_the_ratio_line(tmp_path):
    data = tmp_path / "pairs.jsonl"
    write_pairs(data)
    command = [
        sys.executable, str(ROOT / "benchmarks" / "throughput.py"),
        "--model", "random:llama", "--data", str(data), "--steps", "3", "--batch-size", "4",
        "--max-length", "96", "--eval-examples", "4", "--threads", "1",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert any(line.startswith("reference ") for line in lines)
    assert any(line.startswith("tunelab ") for line in lines)
    match = LAST_LINE.match(lines[-1])
    assert match, lines[-1]
    speed, memory, delta = (float(value) for value in match.groups())
    assert 0.05 < speed < 50
    assert 0.2 < memory < 5
    assert math.isfinite(delta) and abs(delta) < 0.5  # same data, same steps, tiny model
