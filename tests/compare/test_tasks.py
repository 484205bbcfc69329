"""Comparisons of multi-task runs: a quality metric that names one task's metric (TASK/METRIC),
the per-task table (base, then each variant with the task's role there, forgetting probes),
and `x-` keys that only hold YAML anchors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunelab.compare import load_compare_config
from tunelab.compare.config import run_configs
from tunelab.compare.results import markdown
from tunelab.compare.runner import compare
from tunelab.compare.tasks import quality_pair, split_quality, task_table
from tunelab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def tasks_base() -> dict:
    """Two builtin tasks on a tiny model: `rev` trained or held out, `json` held out."""
    return {
        "model": {"name": "random:llama"},
        "method": {"name": "lora"},
        "data": {"max_length": 64, "max_eval_examples": 3, "builtin_size": 24,
                 "tasks": [{"name": "rev", "train": "builtin:reverse", "metrics": ["loss", "chrf"]},
                           {"name": "json", "train": "builtin:json", "held_out": True}]},
        "train": {"batch_size": 4, "num_threads": 1},
        "eval": {"metrics": ["loss"], "max_new_tokens": 3},
    }  # fmt: skip


def test_split_quality():
    assert split_quality("translate-en-xh/chrf++") == ("translate-en-xh", "chrf++")
    assert split_quality("loss") == (None, "loss")


def test_quality_pair_reads_the_tasks_block():
    summary = {"before": {"loss": 2.0}, "after": {"loss": 1.0},
               "tasks": {"t": {"before": {"chrf": 3.0}, "after": {"chrf": 9.0}}}}  # fmt: skip
    assert quality_pair(summary, "t/chrf") == (3.0, 9.0)
    assert quality_pair(summary, "loss") == (2.0, 1.0)
    assert quality_pair(summary, "other/chrf") == (None, None)


@pytest.mark.parametrize(
    ("quality", "message"),
    [("nope/loss", "data.tasks: no task 'nope' (known: rev, json)"),
     ("rev/bleu", "task 'rev': its metrics lack 'bleu'"),
     ("chrf", "eval.metrics: lacks 'chrf'")],
)  # fmt: skip
def test_a_quality_the_runs_cannot_report_is_named(tmp_path, quality, message):
    raw = {"base": tasks_base(), "variants": {"a": {}}, "budget_steps": 1,
           "quality": quality, "output_dir": str(tmp_path / "out")}  # fmt: skip
    with pytest.raises(ConfigError, match="quality") as caught:
        run_configs(load_compare_config(raw))
    assert message in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_x_keys_hold_anchors_and_are_ignored(tmp_path):
    text = """
x-tasks:
  rev: &rev {name: rev, train: builtin:reverse}
base: {model: {name: random:llama}, method: {name: lora}, data: {tasks: [*rev]}}
variants: {a: {}}
"""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    configs = run_configs(load_compare_config(path))
    assert [task.name for task in configs["a"].data.tasks] == ["rev"]


def _row(variant: str, role: str, before: float, after: float) -> dict:
    return {"variant": variant, "status": "finished",
            "tasks": {"t": {"role": role, "before": {"chrf": before}, "after": {"chrf": after}}},
            "forgetting_probes": {"english_perplexity": {"before": 40.0, "after": 44.0,
                                                         "relative_change": 0.1}}}  # fmt: skip


def test_task_table_tags_roles_and_shows_forgetting():
    results = {"methods": [_row("a", "train", 3.0, 9.0), _row("b", "held_out", 3.0, 4.0),
                           {"variant": "c", "status": "failed"}]}  # fmt: skip
    headers, rows = task_table(results)
    assert headers == ["task", "metric", "base", "a", "b"]
    assert rows[0] == ["t", "chrf", "3", "9", "4 (zero-shot)"]
    assert rows[1] == ["forgetting", "english_perplexity", "40", "44 (+10.0 %)", "44 (+10.0 %)"]


def test_task_table_shows_a_base_score_that_differs_between_variants():
    results = {"methods": [_row("a", "train", 3.0, 9.0), _row("b", "train", 3.5, 9.0)]}
    assert task_table(results)[1][0][2] == "3–3.5 (differs)"


def test_single_task_comparisons_have_no_task_table():
    assert task_table({"methods": [{"variant": "a", "status": "finished", "tasks": None}]}) == (
        [], [])  # fmt: skip


def test_a_comparison_of_task_variants_reports_every_task(tmp_path):
    both = [{"name": "rev", "train": "builtin:reverse", "metrics": ["loss", "chrf"]},
            {"name": "json", "train": "builtin:json"}]  # fmt: skip
    raw = {"base": tasks_base(), "budget_steps": 2, "inference_tokens": 2,
           "quality": "rev/chrf", "output_dir": str(tmp_path / "out"),
           "variants": {"rev-only": {}, "both": {"data.tasks": both}}}  # fmt: skip
    results = compare(load_compare_config(raw), progress=False)
    rows = {row["variant"]: row for row in results["methods"]}
    assert all(row["status"] == "finished" for row in rows.values())
    befores = []
    for row in rows.values():  # the quality is the task's own chrF, before and after
        summary = yaml.safe_load((Path(row["run_dir"]) / "summary.json").read_text())
        assert row["quality"] == summary["tasks"]["rev"]["after"]["chrf"]
        assert row["quality_before"] == summary["tasks"]["rev"]["before"]["chrf"]
        befores.append({name: task["before"] for name, task in summary["tasks"].items()})
    # the base model scored each task once (+ the probes), for both variants
    assert len(list((tmp_path / "out" / "before-tasks").glob("*.json"))) == 3
    assert befores[0] == befores[1]
    headers, table = task_table(results)
    cells = {(r[0], r[1]): r[2:] for r in table}
    assert cells[("json", "loss")][1].endswith("(zero-shot)")  # held out in rev-only
    assert not cells[("json", "loss")][2].endswith(")")  # trained in both
    assert ("forgetting", "english_perplexity") in cells
    assert "## Per task" in markdown(results)
    assert "Per task" in (tmp_path / "out" / "report.html").read_text()
    assert results["samples"] and results["samples"][0]["base"] is not None
    # chrF with its bootstrap interval, and the outputs' repetition, per variant
    assert "[" in cells[("rev", "chrf")][1]
    assert ("rev", "seq-rep-4") in cells and ("rev", "length_ratio") in cells
    (pair,) = results["task_pairs"]  # the second variant against the first, same sentences
    assert (pair["against"], pair["variant"], pair["metric"]) == ("rev-only", "both", "chrf")
    after = {name: row["tasks"]["rev"]["after"]["chrf"] for name, row in rows.items()}
    assert pair["delta"] == pytest.approx(after["both"] - after["rev-only"], abs=1e-6)
    assert pair["low"] <= pair["delta"] <= pair["high"]
