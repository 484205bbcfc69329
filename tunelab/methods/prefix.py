"""Prefix-Tuning: Optimizing Continuous Prompts for Generation (Li & Liang 2021),
https://arxiv.org/abs/2101.00190.

Every attention layer gets learned key and value vectors for a few virtual positions in front
of the input, which real tokens attend to; the model stays frozen. Optionally the prefix comes
out of an MLP during training (steadier); afterwards only the resulting keys and values count.
"""

from __future__ import annotations

from typing import ClassVar

from peft import PrefixTuningConfig, TaskType
from torch import nn

from tunelab.methods.base import MethodSettings, method_field
from tunelab.methods.peft_base import PeftMethod


class PrefixSettings(MethodSettings):
    name: str = "prefix"
    num_virtual_tokens: int = method_field(
        20, "virtual positions with learned keys and values in every layer", gt=0
    )
    prefix_projection: bool = method_field(
        False, "produce the prefix with a two-layer MLP while training (Li & Liang's reparam.)"
    )
    encoder_hidden_size: int | None = method_field(
        None, "hidden width of that MLP; default: the model's hidden size", gt=0
    )


class PrefixTuning(PeftMethod):
    name = "prefix"
    paper = "Li & Liang 2021, Prefix-Tuning: Optimizing Continuous Prompts for Generation"
    idea = "freeze the model, learn keys and values of virtual positions in every layer"
    default_lr = 1e-2
    mergeable = False
    supports_packing = False  # the prefix goes before each example, once per row
    prompt_learning = True
    Config: ClassVar[type[MethodSettings]] = PrefixSettings

    def peft_config(self, model: nn.Module, cfg: PrefixSettings) -> PrefixTuningConfig:
        return PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=cfg.num_virtual_tokens,
            prefix_projection=cfg.prefix_projection,
            encoder_hidden_size=cfg.encoder_hidden_size,
        )
