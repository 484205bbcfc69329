"""P-tuning: GPT Understands, Too (Liu et al. 2021), https://arxiv.org/abs/2103.10385.

Like prompt tuning, learned virtual tokens go before every input and the model stays frozen,
but the virtual-token embeddings come out of a small encoder (an MLP or an LSTM) over trainable
inputs, which makes optimisation steadier. After training only the encoder's output is needed.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from peft import PromptEncoderConfig, TaskType
from torch import nn

from tunelab.methods.base import MethodSettings, method_field
from tunelab.methods.peft_base import PeftMethod


class PtuningSettings(MethodSettings):
    name: str = "ptuning"
    num_virtual_tokens: int = method_field(20, "learned embeddings put before every input", gt=0)
    encoder_hidden_size: int = method_field(128, "hidden width of the prompt encoder", gt=0)
    encoder_reparameterization_type: Literal["MLP", "LSTM"] = method_field(
        "MLP", "the prompt encoder: MLP (two layers) | LSTM (bidirectional, then an MLP)"
    )


class Ptuning(PeftMethod):
    name = "ptuning"
    paper = "Liu et al. 2021, GPT Understands, Too"
    idea = "virtual tokens before every input, produced by a small trainable MLP or LSTM"
    default_lr = 1e-2
    mergeable = False
    prompt_learning = True
    Config: ClassVar[type[MethodSettings]] = PtuningSettings

    def peft_config(self, model: nn.Module, cfg: PtuningSettings) -> PromptEncoderConfig:
        return PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=cfg.num_virtual_tokens,
            encoder_hidden_size=cfg.encoder_hidden_size,
            encoder_reparameterization_type=cfg.encoder_reparameterization_type,
        )
