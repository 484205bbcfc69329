"""LoRA: Low-Rank Adaptation of Large Language Models (Hu et al. 2021),
https://arxiv.org/abs/2106.09685 — and DoRA: Weight-Decomposed Low-Rank Adaptation
(Liu et al. 2024), https://arxiv.org/abs/2402.09353.

LoRA freezes W and learns ΔW = (alpha / r)·B·A with A: (r, in), B: (out, r), B zero-initialised,
so training starts from the base model exactly. DoRA splits W into magnitude and direction and
applies the low-rank update to the direction only. Both merge into W after training.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from peft import LoraConfig, TaskType
from torch import nn

from tunelab.methods.base import MethodSettings, method_field
from tunelab.methods.peft_base import PeftMethod, Targets, resolve_targets


class LoraSettings(MethodSettings):
    name: str = "lora"
    r: int = method_field(8, "rank of the update", gt=0)
    alpha: float = method_field(16.0, "scale numerator: ΔW is multiplied by alpha / r", gt=0)
    dropout: float = method_field(0.0, "dropout on the LoRA input", ge=0, lt=1)
    target_modules: Targets = method_field("all", "all | attention | mlp | list of module names")
    bias: Literal["none", "all", "lora_only"] = method_field(
        "none", "which biases train too: none | all | lora_only"
    )


class Lora(PeftMethod):
    name = "lora"
    paper = "Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models"
    idea = "freeze W, learn a low-rank update BA on chosen projections"
    default_lr = 5e-4
    Config: ClassVar[type[MethodSettings]] = LoraSettings
    use_dora: ClassVar[bool] = False

    def peft_config(self, model: nn.Module, cfg: LoraSettings) -> LoraConfig:
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=resolve_targets(model, cfg.target_modules),
            bias=cfg.bias,
            use_dora=self.use_dora,
        )


class DoraSettings(LoraSettings):
    name: str = "dora"


class Dora(Lora):
    name = "dora"
    paper = "Liu et al. 2024, DoRA: Weight-Decomposed Low-Rank Adaptation"
    idea = "LoRA on the direction of W, with a learned per-column magnitude"
    Config: ClassVar[type[MethodSettings]] = DoraSettings
    use_dora = True
