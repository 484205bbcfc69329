"""Checks before any work: settings that cannot be honoured, finished runs never silently
replaced, method fields checked against the loaded model, README config keys all honoured."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tunelab import train
from tunelab.config import DataConfig, EvalConfig, ModelConfig, TrainConfig
from tunelab.errors import ConfigError
from tunelab.run_config import RunConfig
from tunelab.training.preflight import check_settings

ROOT = Path(__file__).resolve().parents[2]


def tiny(tmp_path, **train_values) -> dict:
    return {
        "model": {"name": "random:llama"},
        "data": {"train": "builtin:add", "eval": "builtin:add", "builtin_size": 16,
                 "max_eval_examples": 4, "max_length": 48},
        "train": {"max_steps": 1, "batch_size": 4, "progress": False, **train_values},
        "eval": {"metrics": ["loss"], "before": False},
        "output_dir": str(tmp_path / "run"),
    }  # fmt: skip


def test_cuda_without_a_gpu_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="train.device: cuda, but torch sees no GPU"):
        check_settings(RunConfig.model_validate({"train": {"device": "cuda"}}))
    check_settings(RunConfig.model_validate({"train": {"device": "auto"}}))


def test_overwrite_replaces_a_finished_run_and_nothing_else_does(tmp_path):
    first = train(tiny(tmp_path, lr=1e-3))
    summary = (first.run_dir / "summary.json").read_bytes()
    with pytest.raises(ConfigError, match="--overwrite"):
        train(tiny(tmp_path, lr=2e-3))
    assert (first.run_dir / "summary.json").read_bytes() == summary
    assert train(tiny(tmp_path, lr=1e-3), resume=True).summary["lr"] == 1e-3  # kept as is
    with pytest.raises(ConfigError, match="train.lr: differs from the run"):
        train(tiny(tmp_path, lr=2e-3), resume=True)  # never silently ignored
    second = train(tiny(tmp_path, lr=2e-3), overwrite=True)
    assert second.summary["lr"] == 2e-3


def readme_config_keys() -> list[str]:
    """`section.key` names of the README's config reference table (first column)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("## Config reference", 1)[1].split("\n## ", 1)[0]
    keys = []
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        section = None
        for name in re.findall(r"`([^`]+)`", cell):
            if "." in name:
                section, name = name.split(".", 1)
            name = name.strip("*")
            keys.append(f"{section}.{name}" if section else name)
    return keys


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig}


def test_every_readme_key_exists_in_the_schema():
    keys = readme_config_keys()
    assert len(keys) > 30
    for key in keys:
        if key == "output_dir":
            continue
        section, name = key.split(".", 1)
        if section == "method":
            assert name == "name"
            continue
        if name.endswith("_field"):  # `*_field` stands for the four field-name keys
            continue
        assert name in SECTIONS[section].model_fields, key


@pytest.mark.parametrize("section", list(SECTIONS))
def test_every_setting_is_read_by_the_library(section):
    """A field no code reads would be silently ignored (as `train.compile` was): each one must
    be read as `.name` (or passed on by name) somewhere in tunelab."""
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tunelab").rglob("*.py"))
    for name in SECTIONS[section].model_fields:
        used = re.search(rf"(?<!\bre)\.{name}\b|[\"']{name}[\"']", sources)
        assert used, f"{section}.{name} is never read"


def test_resume_checks_the_config_only_when_there_is_a_run_to_continue(tmp_path):
    """A folder with an old config.yaml but no summary or checkpoint (e.g. compare cleared it)
    has nothing to mix; with a checkpoint, a changed setting is refused."""
    from tunelab.run import RunFiles
    from tunelab.run_config import dump_config, load_config
    from tunelab.training.preflight import check_resume

    files = RunFiles(tmp_path / "run")
    files.root.mkdir()
    files.config.write_text(dump_config(load_config(tiny(tmp_path, lr=1e-3))))
    changed = load_config(tiny(tmp_path, lr=2e-3, progress=True, num_threads=2))
    check_resume(files, changed)
    (files.checkpoints / "step-0000001").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"^train\.lr: differs"):
        check_resume(files, changed)
    check_resume(files, load_config(tiny(tmp_path, lr=1e-3, progress=True, num_threads=2)))
