"""benchmarks/eval_generation.py on random:llama: both sides decode every prompt, the outputs
are compared (equal here; a differing output fails the run), and the ratio line is printed.
Timings are not checked: they mean nothing on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
RATIO = re.compile(
    r"^ratio output_tokens_per_s=\d+\.\d\d per_cpu_s=\d+\.\d\d identical=(\d+)/(\d+)$"
)


def load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "eval_generation", ROOT / "benchmarks" / "eval_generation.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_config(tmp_path: Path) -> Path:
    """A pairs run on random:llama in the Xhosa config's shape (Aya fields, newline stop)."""
    for split, offset in (("train", 0), ("dev", 50)):
        with (tmp_path / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for index in range(offset, offset + 10):
                words = " ".join(f"word{(index + k) % 13}" for k in range(2 + index % 5))
                row = {"inputs": f"Translate into isiXhosa.\n\n{words}", "targets": f"molo {words}"}
                handle.write(json.dumps(row) + "\n")
    config = {
        "model": {"name": "random:llama"},
        "data": {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "dev.jsonl"),
                 "format": "pairs", "prompt_field": "inputs", "response_field": "targets",
                 "max_length": 96},
        "method": {"name": "lora"},
        "eval": {"metrics": ["chrf++"], "max_new_tokens": 6, "max_examples": 7, "batch_size": 3},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def run(benchmark, config: Path, capsys) -> tuple[int, list[str]]:
    threads = str(torch.get_num_threads())  # the benchmark sets it: leave the process as it was
    code = benchmark.main(["--config", str(config), "--threads", threads])
    return code, capsys.readouterr().out.strip().splitlines()


def test_both_sides_decode_every_prompt_and_the_outputs_match(tmp_path, capsys):
    code, lines = run(load_benchmark(), write_config(tmp_path), capsys)
    assert code == 0, lines
    assert "7 prompts" in lines[0] and "'stop_at_newline': True" in lines[0]
    assert [line.split()[0] for line in lines[1:3]] == ["reference", "tunelab"]
    match = RATIO.match(lines[-1])
    assert match and match.groups() == ("7", "7"), lines[-1]


def test_a_differing_output_is_named_and_fails_the_run(tmp_path, capsys):
    benchmark = load_benchmark()
    real = benchmark.generate
    benchmark.generate = lambda *args, **kwargs: ["changed", *real(*args, **kwargs)[1:]]
    code, lines = run(benchmark, write_config(tmp_path), capsys)
    assert code == 1
    assert any(line.startswith("differs #0:") for line in lines)
    assert RATIO.match(lines[-1]).groups() == ("6", "7")
