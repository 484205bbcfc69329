"""(IA)³: Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning (Liu et al. 2022), https://arxiv.org/abs/2205.05638.

Learned vectors rescale activations elementwise: the keys and values of attention and the
intermediate activation of the MLP. The vectors start at one, so training starts from the base
model exactly; a rescaling is a diagonal matrix, so it merges into the adjacent weight.
"""

from __future__ import annotations

from typing import ClassVar

from peft import IA3Config, TaskType
from torch import nn

from tunelab.methods.base import MethodSettings, method_field
from tunelab.methods.peft_base import PeftMethod
from tunelab.models.arch import arch_of


class Ia3Settings(MethodSettings):
    name: str = "ia3"
    target_modules: list[str] | None = method_field(
        None,
        "modules whose activations are rescaled; default: PEFT's choice for the architecture "
        "(keys or queries, values, and the MLP down-projection)",
    )
    feedforward_modules: list[str] | None = method_field(
        None,
        "those of target_modules rescaled on their input (the MLP intermediate) rather than "
        "their output; default: PEFT's choice, or the MLP projections among target_modules",
    )


class Ia3(PeftMethod):
    name = "ia3"
    paper = "Liu et al. 2022, Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper"
    idea = "learn vectors that rescale keys, values and MLP activations (starting at one)"
    default_lr = 3e-3
    mergeable = True
    Config: ClassVar[type[MethodSettings]] = Ia3Settings

    def peft_config(self, model: nn.Module, cfg: Ia3Settings) -> IA3Config:
        feedforward = cfg.feedforward_modules
        if cfg.target_modules is not None and feedforward is None:
            mlp = arch_of(model).mlp_projections
            feedforward = [name for name in cfg.target_modules if name.split(".")[-1] in mlp]
        return IA3Config(
            task_type=TaskType.CAUSAL_LM,
            target_modules=cfg.target_modules,
            feedforward_modules=feedforward,
        )
