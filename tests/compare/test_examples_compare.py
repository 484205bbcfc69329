"""Every comparison example in examples/ runs end to end, shrunk to a tiny model and two
steps per run on the same data files: every listed method or variant finishes and is measured."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunelab.compare import load_compare_config
from tunelab.compare.runner import compare

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(
    p for p in (ROOT / "examples").glob("*.yaml") if "base" in yaml.safe_load(p.read_text())
)


def shrunk(path: Path, output: Path) -> dict:
    raw = yaml.safe_load(path.read_text())
    base = raw["base"]
    base["model"] = {"name": "random:llama"}
    base["data"].update(max_train_examples=16, max_eval_examples=4, max_length=64)
    base["train"] = {**base.get("train", {}), "num_threads": 1, "batch_size": 4}
    base["eval"].update(max_new_tokens=4, max_examples=2)
    return {**raw, "budget_steps": 2, "inference_tokens": 2, "output_dir": str(output)}


def test_there_are_comparison_examples():
    assert {"demo-compare", "xhosa-compare", "xhosa-variants-compare"} <= {p.stem for p in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_comparison_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # data paths in examples are relative to the repository root
    cfg = load_compare_config(shrunk(path, tmp_path / "out"))
    results = compare(cfg, label=path.name, progress=False)
    failed = {r["method"]: r["error"] for r in results["methods"] if r["status"] != "finished"}
    assert not failed
    assert [r["variant"] for r in results["methods"]] == cfg.variant_names()
    assert (tmp_path / "out" / "report.html").exists()
