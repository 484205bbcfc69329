"""Prompt tuning, p-tuning and prefix tuning on packed rows: the virtual tokens (prefix
tuning's cached keys and values) are the row's shared prefix, so every example sees them
exactly as it would alone behind its own copy. Loss and gradients equal one example per row
(PEFT's own forward), inside the training fast paths and outside them (evaluation), with a
shared prompt prefix stored once as well."""

from __future__ import annotations

import pytest
import torch
from peft import (
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)

from tunelab.data.batching import packed_batch, padded_batch
from tunelab.methods import get_method
from tunelab.models.tiny import random_model
from tunelab.run_config import load_config
from tunelab.training.fastpath import fast_paths
from tunelab.training.loss import token_loss_sum
from tunelab.training.plan import plan_data

from .test_fastpath import rows

VIRTUAL = 5
CONFIGS = {
    "prompt": lambda: PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=VIRTUAL),
    "ptuning": lambda: PromptEncoderConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=VIRTUAL, encoder_hidden_size=16
    ),
    "prefix": lambda: PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=VIRTUAL),
}


def prompt_model(arch: str, method: str):
    model, _ = random_model(arch, seed=0)
    torch.manual_seed(0)
    return get_peft_model(model.eval(), CONFIGS[method]())


def loss_and_gradients(model, batches, fast: bool):
    """Summed loss over `batches` and the trainable parameters' gradients."""
    model.zero_grad(set_to_none=True)
    total = 0.0
    for batch in batches:
        if fast:
            with fast_paths(model, packing=True):
                loss, _ = token_loss_sum(model, batch)
        else:
            loss, _ = token_loss_sum(model, batch)
        loss.backward()
        total += float(loss)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return total, grads


@pytest.mark.parametrize("method", ["prompt", "ptuning", "prefix"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])  # gemma3: a sliding-window layer
@pytest.mark.parametrize("prefix", [0, 12], ids=["no-shared-prefix", "shared-prefix"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast-paths", "evaluation"])
def test_packed_row_equals_one_example_per_row(method, arch, prefix, fast):
    model = prompt_model(arch, method)
    items = rows([7, 18, 4, 9], prefix=prefix)  # 18 + 12 + 5 > the tiny sliding window
    alone, reference = loss_and_gradients(model, [padded_batch([i], 0) for i in items], False)
    packed, grads = loss_and_gradients(model, [packed_batch(items)], fast)
    assert packed == pytest.approx(alone, rel=1e-5)
    assert reference  # the virtual tokens (or their encoder) learn
    for name, grad in reference.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("method", ["prompt", "ptuning", "prefix"])
def test_the_run_packs_every_prompt_style_method(tmp_path, method):
    cfg = load_config({"model": {"name": "random:llama"}, "method": {"name": method},
                       "data": {"train": "builtin:reverse", "builtin_size": 16},
                       "output_dir": str(tmp_path)})  # fmt: skip
    model, tokenizer = random_model("llama")
    plan = plan_data(cfg, tokenizer, get_method(method), model)
    assert plan.packing
