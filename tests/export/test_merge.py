"""`merge_run`: a merged LoRA / DoRA / IA³ run is a plain transformers folder that gives the
unmerged run's logits; prompt-learning runs refuse to merge, with the reason, writing nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab import train
from tunelab.errors import MergeNotSupported, TunelabError
from tunelab.export.merge import merge_run
from tunelab.models import load_model_and_tokenizer
from tunelab.run import load_run, read_run_config

TEXTS = ["hello world, merged", "abc"]


def make_run(root: Path, method: str, arch: str = "llama", lr: float = 3e-2) -> Path:
    """A run of a few steps at a high learning rate, so the update is far from zero."""
    config = {
        "model": {"name": f"random:{arch}"},
        "data": {"train": "builtin:reverse", "builtin_size": 16, "max_length": 32},
        "method": {"name": method},
        "train": {"max_steps": 4, "lr": lr, "batch_size": 4, "tokens_per_batch": 128,
                  "progress": False},
        "eval": {"before": False, "metrics": ["loss"]},
        "output_dir": str(root / f"{method}-{arch}"),
    }  # fmt: skip
    return train(config).run_dir


def logits(model, tokenizer) -> torch.Tensor:
    """(B, T, vocab) for TEXTS, right-padded."""
    batch = tokenizer(TEXTS, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize(
    ("method", "arch"),
    [("lora", "llama"), ("dora", "llama"), ("ia3", "llama"), ("ia3", "gpt2"), ("ia3", "bloom")],
)
def test_merged_folder_loads_plainly_and_matches(method, arch, tmp_path):
    run = make_run(tmp_path, method, arch)
    output = merge_run(run, tmp_path / "merged")
    assert not (output / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(output)
    unmerged, run_tokenizer = load_run(run)
    base, _ = load_model_and_tokenizer(read_run_config(run).model)
    expected = logits(unmerged, run_tokenizer)
    assert (logits(merged, tokenizer) - expected).abs().max() <= 1e-4
    assert (logits(base, run_tokenizer) - expected).abs().max() > 1e-3  # the update matters


@pytest.mark.parametrize("method", ["prompt", "prefix", "ptuning"])
def test_prompt_learning_refuses_with_a_reason(method, tmp_path):
    run = make_run(tmp_path, method)
    with pytest.raises(MergeNotSupported, match=rf"{method}: .*nothing to fold") as caught:
        merge_run(run, tmp_path / "merged")
    assert isinstance(caught.value, TunelabError)  # the CLI prints one line, exits 2
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "merged").exists()


def test_refuses_to_replace_the_run_or_a_non_model_folder(tmp_path):
    run = make_run(tmp_path, "lora")
    for output in (run, run.parent):
        with pytest.raises(TunelabError, match="would replace the run"):
            merge_run(run, output)
    occupied = tmp_path / "notes"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(TunelabError, match="holds no model"):
        merge_run(run, occupied)
    assert (occupied / "keep.txt").read_text() == "mine"
    merge_run(run, tmp_path / "merged")
    merge_run(run, tmp_path / "merged")  # an earlier merged model is replaced
    assert (tmp_path / "merged" / "config.json").is_file()
