"""`AdapterSet`: runs of every method on one loaded base. Switching among them in any order
gives logits bit-identical to a fresh `load_run` of each run, the base stays untouched and is
loaded once, and generation matches the run loaded alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.evaluate import generate
from tunelab.evaluate.decoding import resolve_options
from tunelab.models import load_model_and_tokenizer
from tunelab.run import load_run, read_run_config
from tunelab.serve import adapters
from tunelab.serve.adapters import AdapterSet

TEXTS = ["hello world, served", "abc"]
PROMPTS = ["reverse: abc", "hi"]


def logits(model, tokenizer) -> torch.Tensor:
    """(B, T, vocab) — (B, V + T, vocab) for virtual-token methods — for TEXTS, right-padded."""
    batch = tokenizer(TEXTS, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module")
def runs(method_runs) -> dict[str, Path]:
    return method_runs


@pytest.fixture(scope="module")
def fresh(runs) -> dict[str, torch.Tensor]:
    """Logits of each run loaded alone onto a fresh base, and of the base itself."""
    expected = {name: logits(*load_run(run)) for name, run in runs.items()}
    base_config = read_run_config(runs["lora_a"]).model
    expected["base"] = logits(*load_model_and_tokenizer(base_config))
    return expected


def test_switching_is_bit_identical_to_a_fresh_load(runs, fresh, monkeypatch):
    loads = []

    def counted(config):
        loads.append(config.name)
        return load_model_and_tokenizer(config)

    monkeypatch.setattr(adapters, "load_model_and_tokenizer", counted)
    served = AdapterSet.from_runs(runs)
    assert loads == ["random:llama"] and served.names == list(runs)
    assert served.active == "lora_a"
    order = [*runs, "base", *reversed(runs), None, "full", "lora_a", "prompt", "lora_b", "lora_a"]
    for name in order:
        served.use(name)
        assert torch.equal(logits(served.model, served.tokenizer), fresh[name or "base"]), name


def test_runs_differ_so_switching_shows(fresh):
    names = list(fresh)
    for index, name in enumerate(names):
        for other in names[index + 1 :]:
            same_shape = fresh[name].shape == fresh[other].shape
            assert not (same_shape and torch.equal(fresh[name], fresh[other])), (name, other)


def test_views_share_the_base_tensors(runs):
    served = AdapterSet.from_runs({"lora": runs["lora_a"], "full": runs["full"]})
    base = {parameter.data_ptr() for parameter in served.base.parameters()}
    served.use("lora")
    frozen = [p for n, p in served.model.named_parameters() if "lora_" not in n]
    assert frozen and all(parameter.data_ptr() in base for parameter in frozen)
    served.use("full")  # every tensor trained: the view holds its own copies
    assert not any(p.data_ptr() in base for p in served.model.parameters())


@pytest.mark.parametrize("name", ["lora_a", "prompt", "prefix", "full", "adapter"])
def test_generation_matches_the_run_alone(runs, name):
    served = AdapterSet.from_runs({"other": runs["ia3"], name: runs[name]})
    served.use(name)
    alone, tokenizer = load_run(runs[name])
    decoding = resolve_options(read_run_config(runs[name]).eval.decoding(), [])  # the run's
    expected = generate(alone, tokenizer, PROMPTS, max_new_tokens=6, batch_size=2, **decoding)
    assert served.generate(PROMPTS, 6, raw=True) == expected


def test_refuses_other_bases_unknown_and_taken_names(runs, tmp_path, make_run):
    served = AdapterSet("random:llama")
    assert served.active is None and served.names == []
    other_seed = make_run(tmp_path, "seed1", "lora", 1e-2, seed=1)
    with pytest.raises(TunelabError, match="every run must share the base model"):
        served.add("seed1", other_seed)
    served.add("lora", runs["lora_a"])
    for taken in ("lora", "base"):
        with pytest.raises(TunelabError, match=f"name '{taken}'"):
            served.add(taken, runs["lora_b"])
    with pytest.raises(TunelabError, match="no adapter named 'missing'"):
        served.use("missing")
    with pytest.raises(TunelabError, match="at least one"):
        AdapterSet.from_runs({})


OVERWRITING = {  # runs whose load writes into base tensors (biases, norms) on gpt2
    "bitfit": {"name": "bitfit"},
    "lora_bias": {"name": "lora", "bias": "all"},
    "adapter_norms": {"name": "adapter", "train_layer_norms": True},
}


def test_runs_that_overwrite_base_tensors_leave_the_base_alone(tmp_path, make_run):
    made = {
        name: make_run(tmp_path, name, method, 3e-2, arch="gpt2")
        for name, method in OVERWRITING.items()
    }
    expected = {name: logits(*load_run(run)) for name, run in made.items()}
    served = AdapterSet.from_runs(made)
    base = logits(served.base, served.tokenizer)
    assert torch.equal(base, logits(*load_model_and_tokenizer(served.model_config)))
    for name in [*made, *made]:
        served.use(name)
        assert torch.equal(logits(served.model, served.tokenizer), expected[name]), name
        assert not torch.equal(expected[name], base)
