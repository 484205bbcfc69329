"""The comparison config: validated up front, every error naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunelab.compare import load_compare_config
from tunelab.compare.config import TIME_ONLY_STEP_CAP, quality_metric, run_configs
from tunelab.errors import ConfigError
from tunelab.methods import METHODS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_each_method_gets_base_budget_overrides_and_its_own_folder(comparison_dict, tmp_path):
    raw = comparison_dict(tmp_path, methods=["lora", "prompt"],
                          overrides={"lora": {"method.r": 4, "train.lr": 0.01}})  # fmt: skip
    configs = run_configs(load_compare_config(raw))
    assert list(configs) == ["lora", "prompt"]
    assert configs["lora"].method.r == 4 and configs["lora"].train.lr == 0.01
    assert configs["prompt"].train.lr is None  # the method's own default
    assert all(c.train.max_steps == 3 and c.train.seed == 0 for c in configs.values())
    assert configs["prompt"].output_dir == str(tmp_path / "runs" / "prompt")
    assert configs["lora"].data == configs["prompt"].data


def test_all_means_every_registered_method(comparison_dict, tmp_path):
    cfg = load_compare_config(comparison_dict(tmp_path, methods="all"))
    assert cfg.method_names() == list(METHODS)


def test_flags_override_the_file(comparison_dict, tmp_path):
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(comparison_dict(tmp_path, methods=["lora"])))
    flags = {"methods": ["ia3", "lora"], "budget_steps": None, "budget_seconds": 5.0}
    cfg = load_compare_config(path, flags=flags)
    assert cfg.method_names() == ["ia3", "lora"] and cfg.budget_steps == 3
    assert cfg.budget_seconds == 5.0


def test_time_only_budget_uses_a_constant_schedule(comparison_dict, tmp_path):
    raw = comparison_dict(tmp_path, methods=["lora"], budget_steps=None, budget_seconds=2)
    run = run_configs(load_compare_config(raw))["lora"]
    assert run.train.max_steps == TIME_ONLY_STEP_CAP and run.train.schedule == "constant"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": ["lora", "nope"]}, "methods: Value error, unknown method 'nope'"),
        ({"budget_steps": 0}, "budget_steps: Input should be greater than 0"),
        ({"colour": "red"}, "colour: unknown key"),
        ({"overrides": {"lorra": {"method.r": 4}}}, "overrides: Value error, unknown method"),
        ({"overrides": {"lora": {"output_dir": "x"}}}, "lora.output_dir is set by the comparison"),
    ],
)
def test_errors_name_the_key(comparison_dict, tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_compare_config(comparison_dict(tmp_path, **change))


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("method", {"name": "lora"}, "base.method: the methods come from `methods:`"),
        ("output_dir", "x", "base.output_dir"),
        ("train", {"lr": 0.1}, "base.train.lr: each method trains at its own default lr"),
    ],
)
def test_base_must_leave_per_method_keys_alone(comparison_dict, tmp_path, section, value, message):
    raw = comparison_dict(tmp_path)
    raw["base"][section] = value
    with pytest.raises(ConfigError, match=message):
        load_compare_config(raw)


def test_a_bad_override_names_method_and_key(comparison_dict, tmp_path):
    raw = comparison_dict(tmp_path, methods=["lora"], overrides={"lora": {"method.r": 0}})
    with pytest.raises(ConfigError, match="method lora: method.r: Input should be greater than 0"):
        run_configs(load_compare_config(raw))
    raw["overrides"] = {"lora": {"method.rank": 4}}
    with pytest.raises(ConfigError, match="method lora: method.rank: unknown key"):
        run_configs(load_compare_config(raw))


def test_quality_metric_default_and_check(comparison_dict, tmp_path):
    cfg = load_compare_config(comparison_dict(tmp_path, methods=["lora"]))
    run = run_configs(cfg)["lora"]
    assert quality_metric(cfg, run) == "exact_match"  # the first generative metric
    cfg = load_compare_config(comparison_dict(tmp_path, methods=["lora"], quality="bleu"))
    with pytest.raises(ConfigError, match="quality: 'bleu': eval.metrics: lacks 'bleu'"):
        run_configs(cfg)


@pytest.mark.parametrize("name", ["demo-compare.yaml", "xhosa-compare.yaml"])
def test_example_configs_validate(name):
    cfg = load_compare_config(EXAMPLES / name)
    configs = run_configs(cfg, name)
    assert len(configs) >= 4
    assert cfg.budget_steps and all(c.train.max_steps == cfg.budget_steps for c in configs.values())


def test_variants_example_validates_with_an_example_budget(monkeypatch):
    monkeypatch.chdir(EXAMPLES.parent)  # its data paths are relative to the repository root
    cfg = load_compare_config(EXAMPLES / "xhosa-variants-compare.yaml")
    configs = run_configs(cfg)
    assert len(configs) >= 4 and {c.method.name for c in configs.values()} == {"lora"}
    assert all(c.train.max_examples == cfg.budget_examples for c in configs.values())
    assert configs["lora-r4"].method.r == 4 and configs["lora"].method.r == 16
    assert configs["lora-padded"].data.packing is False


def test_a_run_counts_as_finished_only_under_the_same_config(comparison_dict, tmp_path):
    from tunelab.compare.worker import MEASUREMENTS, is_finished
    from tunelab.run import RunFiles, write_run_config

    configs = run_configs(load_compare_config(comparison_dict(tmp_path, methods=["lora"])))
    run_dir = tmp_path / "runs" / "lora"
    write_run_config(RunFiles(run_dir), configs["lora"])
    assert not is_finished(run_dir, configs["lora"])  # no summary yet
    for name in ("summary.json", MEASUREMENTS):
        (run_dir / name).write_text("{}")
    assert is_finished(run_dir, configs["lora"])
    changed = load_compare_config(comparison_dict(tmp_path, methods=["lora"], budget_steps=4))
    assert not is_finished(run_dir, run_configs(changed)["lora"])  # a new budget reruns
