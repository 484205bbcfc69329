"""The lean LoRA forward of served views: bit for bit PEFT's output, only where it applies."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunelab.models.tiny import random_model
from tunelab.serve.fastlora import fuse_lora

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_model(**options):
    model, _ = random_model("llama")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False,
                        lora_dropout=0.1, **options)  # fmt: skip
    return get_peft_model(model, config).eval()  # B random, so LoRA changes the output


def test_fused_layers_give_peft_output_bit_for_bit():
    peft_model = lora_model()
    fused = copy.deepcopy(peft_model)
    layers = fused.base_model.model.config.num_hidden_layers
    assert fuse_lora(fused) == len(TARGETS) * layers
    ids = torch.randint(0, 200, (3, 11))
    with torch.inference_mode():
        want = peft_model(input_ids=ids).logits
        got = fused(input_ids=ids).logits
    assert torch.equal(got, want)
    fused.train()  # training mode: PEFT's forward (with its dropout) runs again
    torch.manual_seed(0)
    trained = fused(input_ids=ids).logits
    torch.manual_seed(0)
    assert torch.equal(trained, peft_model.train()(input_ids=ids).logits)


@pytest.mark.parametrize("options", [{"use_dora": True}, {"lora_bias": True}])
def test_variants_keep_peft_forward(options):
    assert fuse_lora(lora_model(**options)) == 0
