"""The method matrix is the contract: every method in METHODS on every tiny architecture.

For each (method, architecture): the trainable parameters are exactly those the method names;
a method that starts from the base model does so exactly; after a few AdamW steps every
trainable tensor changed and every frozen one is bit-identical; the loss falls on a tiny overfit
set; save -> load on a fresh base reproduces the logits; greedy generation with the KV cache
equals decoding without one; merge gives a plain transformers model with the same logits, or
refuses with MergeNotSupported where the method cannot merge. Each pair trains once (a
module-scoped fixture) and every check reads that run; checks that change the model copy it.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

import tunelab.methods
from tunelab.errors import MergeNotSupported
from tunelab.evaluate import generate
from tunelab.methods import METHODS, Method, MethodSettings

from .conftest import PROMPTS, applied, greedy_without_cache, logits, spread_model, train

ARCHS = ("llama", "bloom", "gpt2", "qwen2", "gemma", "gemma3", "mistral")
STEPS = 8  # at least as many as ULMFiT's layer groups (4), so every group unfreezes
LR = 3e-2  # one rate that moves every method's loss within STEPS on the overfit batch
NEW_TOKENS = 4


def _everything(name: str) -> bool:
    return True


def _prompt_encoder(name: str) -> bool:
    return name.startswith("prompt_encoder.")


TRAINS = {  # method -> which parameter names train, decided by name alone
    "full": _everything,
    "lora": lambda name: ".lora_" in name,
    "dora": lambda name: ".lora_" in name,  # lora_A, lora_B and lora_magnitude_vector
    "ia3": lambda name: ".ia3_" in name,
    "prefix": _prompt_encoder,
    "prompt": _prompt_encoder,
    "ptuning": _prompt_encoder,
    "adapter": lambda name: ".adapter_" in name,
    "bitfit": lambda name: name.endswith((".bias", ".bitfit_bias")),
    "ulmfit": _everything,  # once its schedule has unfrozen every group
    "importance": lambda name: name.endswith(".importance_delta"),
}
VIRTUAL_INPUTS = {"prefix", "prompt", "ptuning"}  # add learned inputs: not the base at init
MERGE_REFUSED = {  # mergeable methods that cannot merge on these architectures, by design
    ("bitfit", "qwen2"): "cannot declare a bias",  # added o/MLP biases: no config switch
    ("bitfit", "gemma"): "cannot declare a bias",
    ("bitfit", "gemma3"): "cannot declare a bias",  # attention_bias, but no MLP switch
    ("bitfit", "mistral"): "cannot declare a bias",  # its projections never carry one
}


@dataclass
class Run:
    """One method on one architecture, trained STEPS steps on the overfit batch."""

    name: str
    arch: str
    method: Method
    cfg: MethodSettings
    model: nn.Module
    tokenizer: object
    batch: dict[str, torch.Tensor]
    base_logits: torch.Tensor  # the untouched base model
    applied_logits: torch.Tensor  # right after apply, before any step
    base_generations: list[str]  # the untouched base model's greedy continuations of PROMPTS
    initial: dict[str, torch.Tensor]  # every parameter right after apply
    losses: list[float]


@pytest.fixture(
    scope="module",
    params=[(name, arch) for name in METHODS for arch in ARCHS],
    ids=lambda pair: "-".join(pair),
)
def run(request) -> Run:
    name, arch = request.param
    model, cfg, batch, tokenizer = applied(name, arch)
    base, _ = spread_model(arch)  # the same weights, untouched
    base_logits = logits(base, batch)
    base_generations = generate(
        base, tokenizer, PROMPTS, max_new_tokens=NEW_TOKENS, batch_size=len(PROMPTS)
    )
    applied_logits = logits(model, batch)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train(model, cfg, batch, steps=STEPS, lr=LR)
    return Run(
        name, arch, METHODS[name], cfg, model, tokenizer, batch,
        base_logits, applied_logits, base_generations, initial, losses,
    )  # fmt: skip


def test_every_method_module_is_registered():
    """Each concrete Method subclass defined in tunelab/methods/ is in METHODS under its name."""
    defined = {}
    for module_info in pkgutil.iter_modules(tunelab.methods.__path__):
        module = importlib.import_module(f"tunelab.methods.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Method) and cls.__module__ == module.__name__:
                if hasattr(cls, "name"):  # bases (Method, PeftMethod) name no method
                    defined[cls.name] = cls
    assert defined.keys() == METHODS.keys()
    for name, method in METHODS.items():
        assert type(method) is defined[name] and method.Config().name == name
    assert TRAINS.keys() == METHODS.keys()  # the matrix knows what each method trains


def test_trainable_parameters_are_those_the_method_names(run):
    names = [name for name, _ in run.model.named_parameters()]
    trainable = {name for name, param in run.model.named_parameters() if param.requires_grad}
    expected = {name for name in names if TRAINS[run.name](name)}
    assert expected, "the rule names no parameter"
    assert trainable == expected
    assert set(run.method.trainable_names(run.model)) == trainable


def test_apply_starts_from_the_base_model(run):
    """Injected weights start as a no-op; learned virtual inputs change the output at once."""
    text = run.applied_logits[:, -run.base_logits.shape[1] :]  # (B, T, vocab): after virtual ones
    if run.name in VIRTUAL_INPUTS:
        assert not torch.allclose(text, run.base_logits)
    else:
        torch.testing.assert_close(run.applied_logits, run.base_logits, atol=1e-5, rtol=0)


def test_steps_change_every_trainable_tensor_and_no_frozen_one(run):
    for name, param in run.model.named_parameters():
        changed = not torch.equal(param, run.initial[name])
        if param.requires_grad:
            assert changed, f"{name} is trainable but did not change"
        else:
            assert not changed, f"{name} is frozen but changed"


def test_loss_falls_on_a_tiny_overfit_set(run):
    assert run.losses[-1] < 0.95 * run.losses[0], run.losses


def test_save_then_load_reproduces_logits(run, tmp_path):
    trained = logits(run.model, run.batch)
    assert not torch.allclose(trained[:, -run.base_logits.shape[1] :], run.base_logits)
    run.method.save(run.model, run.cfg, tmp_path)
    fresh, _ = spread_model(run.arch)
    loaded = run.method.load(fresh, run.cfg, tmp_path).eval()
    torch.testing.assert_close(logits(loaded, run.batch), trained, atol=1e-5, rtol=0)


def test_generation_with_the_kv_cache_equals_decoding_without(run):
    cached = generate(
        run.model, run.tokenizer, PROMPTS, max_new_tokens=NEW_TOKENS, batch_size=len(PROMPTS)
    )
    reference = [greedy_without_cache(run.model, run.tokenizer, p, NEW_TOKENS) for p in PROMPTS]
    assert cached == reference
    assert cached != run.base_generations  # what the method trained takes part in decoding


def test_merge_gives_a_plain_model_with_the_same_logits_or_refuses(run, tmp_path):
    model = copy.deepcopy(run.model)
    if not run.method.mergeable or (run.name, run.arch) in MERGE_REFUSED:
        with pytest.raises(MergeNotSupported, match=MERGE_REFUSED.get((run.name, run.arch))):
            run.method.merge(model, run.cfg)
        return
    expected = logits(model, run.batch)
    merged = run.method.merge(model, run.cfg)
    torch.testing.assert_close(logits(merged, run.batch), expected, atol=1e-4, rtol=0)
    merged.save_pretrained(tmp_path)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(reloaded) is type(merged) is type(spread_model(run.arch)[0])
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
    torch.testing.assert_close(logits(reloaded.eval(), run.batch), expected, atol=1e-4, rtol=0)
