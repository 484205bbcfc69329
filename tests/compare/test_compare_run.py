"""A real tiny comparison through the CLI, each method in its own worker process: results.json
holds every method's trade-offs, a method that fails is recorded while the others finish,
report.html is self-contained with every chart, and a rerun skips finished methods."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import app

from .conftest import tiny_base

TRADE_OFFS = (
    "trainable_params", "trainable_percent", "adapter_bytes", "train_seconds",
    "train_tokens_per_second", "peak_memory_mb", "before", "after", "quality",
    "probe_perplexity", "forgetting", "inference_ms_per_token",
)  # fmt: skip


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """(config path, output folder, CLI result): lora and prompt train; dora is given a
    target module that does not exist, which passes validation and fails at train time."""
    root = tmp_path_factory.mktemp("compare")
    config = {
        "base": tiny_base(),
        "methods": ["lora", "prompt", "dora"],
        "budget_steps": 3,
        "overrides": {"dora": {"method.target_modules": ["no_such_module"]}},
        "inference_tokens": 4,
        "output_dir": str(root / "out"),
    }
    path = root / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["compare", str(path)])
    return path, root / "out", result


def read_results(output) -> dict:
    return json.loads((output / "results.json").read_text())


def test_cli_prints_the_table_and_the_report_path(comparison):
    _, output, result = comparison
    assert result.exit_code == 0, result.output
    assert "report:" in result.output and "report.html" in result.output
    assert all(name in result.output for name in ("lora", "prompt", "dora"))
    lora = read_results(output)["methods"][0]
    (line,) = [line for line in result.output.splitlines() if line.split()[:2] == ["lora", "done"]]
    assert f"{lora['trainable_params']:,}" in line and "report.html" not in line  # whole rows


def test_results_hold_every_method_with_its_trade_offs(comparison):
    _, output, _ = comparison
    results = read_results(output)
    rows = {row["method"]: row for row in results["methods"]}
    assert list(rows) == ["lora", "prompt", "dora"]
    for name in ("lora", "prompt"):
        row = rows[name]
        assert row["status"] == "finished" and row["steps"] == 3
        assert all(row[key] is not None for key in TRADE_OFFS), name
        assert row["trainable_params"] > 0 and row["adapter_bytes"] > 0
        assert set(row["after"]) == {"loss", "perplexity", "exact_match"}
    assert rows["lora"]["merged_inference_ms_per_token"] > 0  # LoRA folds into the weights
    assert rows["prompt"]["merged_inference_ms_per_token"] is None  # prompt tuning cannot
    assert results["base"]["probe_perplexity"] > 1
    assert set(results["pareto"]) == {"quality_vs_trainable_params", "quality_vs_train_seconds"}
    assert (output / "results.md").exists() and (output / "runs" / "lora" / "adapter").is_dir()


def test_a_failing_method_is_recorded_and_the_rest_finish(comparison):
    _, output, _ = comparison
    dora = read_results(output)["methods"][2]
    assert dora["status"] == "failed" and "no_such_module" in dora["error"]
    assert "Traceback" in (output / "runs" / "dora" / "error.log").read_text()


def test_report_is_self_contained_with_a_row_per_method(comparison):
    _, output, _ = comparison
    page = (output / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert len(re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"', page)) == 4
    for name in ("lora", "prompt"):
        assert f"<tr><td>{name}</td>" in page
    assert '<tr class="failed"><td>dora</td>' in page


def test_rerun_skips_finished_methods_and_retries_the_failed(comparison):
    path, output, _ = comparison
    summaries = {name: output / "runs" / name / "summary.json" for name in ("lora", "prompt")}
    stamps = {name: file.stat().st_mtime_ns for name, file in summaries.items()}
    result = CliRunner().invoke(app, ["compare", str(path)])
    assert result.exit_code == 0, result.output
    assert {name: file.stat().st_mtime_ns for name, file in summaries.items()} == stamps
    rows = {row["method"]: row for row in read_results(output)["methods"]}
    assert rows["lora"]["skipped"] and rows["prompt"]["skipped"]
    assert rows["dora"]["status"] == "failed" and not rows["dora"]["skipped"]


def test_invalid_config_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"base": tiny_base(), "methods": ["lora", "nope"]}))
    result = CliRunner().invoke(app, ["compare", str(path)])
    assert result.exit_code == 2
    assert "methods: Value error, unknown method 'nope'" in result.output


def test_time_budget_stops_each_method_gracefully(tmp_path):
    config = {"base": tiny_base(), "methods": ["lora"], "inference_tokens": 2,
              "output_dir": str(tmp_path / "out")}  # fmt: skip
    config["base"]["train"]["max_steps"] = 100_000  # the time budget ends it long before
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["compare", str(path), "--budget-seconds", "0.5"])
    assert result.exit_code == 0, result.output
    (row,) = read_results(tmp_path / "out")["methods"]
    assert row["status"] == "finished" and 0 < row["steps"] < 100_000
    assert row["train_seconds"] < 30 and row["after"]["loss"] > 0
