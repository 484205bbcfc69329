"""The one training loop, end to end on tiny random models: the run-directory contract,
resume equivalence, artifacts that load with plain PEFT / transformers."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tunelab import load_run, train
from tunelab.models.tiny import random_model


def tiny_config(tmp_path, **sections):
    config = {
        "model": {"name": "random:llama"},
        "data": {
            "train": "builtin:reverse",
            "eval": "builtin:reverse",
            "builtin_size": 48,
            "max_eval_examples": 6,
            "max_length": 96,
        },
        "method": {"name": "lora"},
        "train": {"max_steps": 6, "batch_size": 4, "lr": 3e-3, "log_every": 1, "progress": False},
        "eval": {"metrics": ["loss", "perplexity", "exact_match"], "max_new_tokens": 8},
        "output_dir": str(tmp_path / "run"),
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def probe_logits(model) -> torch.Tensor:
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_run_directory_contract(tmp_path):
    result = train(tiny_config(tmp_path))
    root = result.run_dir
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "samples-after.jsonl"):
        assert (root / name).is_file(), name
    assert not (root / "checkpoints").exists()
    summary = json.loads((root / "summary.json").read_text())
    required = {"method", "trainable_params", "total_params", "train_seconds",
                "train_tokens_per_second", "peak_memory_mb", "before", "after"}  # fmt: skip
    assert required <= set(summary)
    assert summary["method"] == "lora"
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert set(summary["before"]) == set(summary["after"]) == {"loss", "perplexity", "exact_match"}
    assert summary["after"]["loss"] < summary["before"]["loss"]
    steps = [json.loads(line)["step"] for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_lora_adapter_loads_with_plain_peft(tmp_path):
    result = train(tiny_config(tmp_path, eval={"before": False, "metrics": ["loss"]}))
    adapter = result.run_dir / "adapter"
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    base, _ = random_model("llama", seed=0)
    plain = PeftModel.from_pretrained(base.eval(), str(adapter)).eval()
    ours, _ = load_run(result.run_dir)
    assert torch.equal(probe_logits(plain), probe_logits(ours))
    untouched, _ = random_model("llama", seed=0)
    assert not torch.equal(probe_logits(plain), probe_logits(untouched.eval()))


def test_full_fine_tuning_saves_a_transformers_model(tmp_path):
    result = train(tiny_config(tmp_path, method={"name": "full"}, eval={"before": False}))
    summary = result.summary
    assert summary["trainable_params"] == summary["total_params"]
    plain = AutoModelForCausalLM.from_pretrained(str(result.run_dir / "adapter")).eval()
    ours, _ = load_run(result.run_dir)
    assert torch.equal(probe_logits(plain), probe_logits(ours))


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_matches_uninterrupted_run(tmp_path, method):
    common = {"method": {"name": method}, "eval": {"before": False, "metrics": ["loss"]}}
    whole = train(tiny_config(tmp_path / "whole", train={"save_every": 2}, **common))

    class Killed(Exception):
        pass

    def kill_after_four(step):
        if step == 4:
            raise Killed  # as if the process died right after step 4's checkpoint

    killed = tiny_config(tmp_path / "killed", train={"save_every": 2}, **common)
    with pytest.raises(Killed):
        train(killed, on_step=kill_after_four)
    assert not (tmp_path / "killed" / "run" / "summary.json").exists()
    resumed = train(killed, resume=True)
    assert resumed.summary["steps"] == whole.summary["steps"]
    name = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    expected = load_file(str(whole.run_dir / "adapter" / name))
    actual = load_file(str(resumed.run_dir / "adapter" / name))
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_bad_data_leaves_an_earlier_run_untouched(tmp_path):
    result = train(tiny_config(tmp_path, eval={"before": False, "metrics": ["loss"]}))
    before = (result.run_dir / "summary.json").read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{not json\n')
    from tunelab.errors import DataError

    with pytest.raises(DataError, match="bad.jsonl:2"):
        train(tiny_config(tmp_path, data={"train": str(bad)}), overwrite=True)
    assert (result.run_dir / "summary.json").read_bytes() == before
