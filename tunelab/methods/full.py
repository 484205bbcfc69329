"""Full fine-tuning: every weight trains. The baseline every other method is measured
against; its artifact is a complete transformers model directory."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from torch import nn
from transformers import AutoModelForCausalLM

from tunelab.methods.base import Method, MethodContext, MethodSettings


class FullSettings(MethodSettings):
    name: str = "full"


class FullFineTuning(Method):
    name = "full"
    paper = "Howard & Ruder 2018; Radford et al. 2018 (standard fine-tuning)"
    idea = "update every weight of the model"
    default_lr = 2e-5
    Config: ClassVar[type[MethodSettings]] = FullSettings
    artifact_files: ClassVar[tuple[str, ...]] = ("config.json",)  # + sharded weights

    def apply(self, model: nn.Module, cfg: MethodSettings, ctx: MethodContext) -> nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def save(self, model: nn.Module, cfg: MethodSettings, directory: Path) -> None:
        save_full_model(model, cfg, directory)

    def load(self, base: nn.Module, cfg: MethodSettings, directory: Path) -> nn.Module:
        return AutoModelForCausalLM.from_pretrained(str(directory), dtype=base.dtype)

    def merge(self, model: nn.Module, cfg: MethodSettings) -> nn.Module:
        return model


def save_full_model(model: nn.Module, cfg: MethodSettings, directory: Path) -> None:
    """A plain transformers model directory (loads with AutoModelForCausalLM)."""
    model.save_pretrained(str(directory))
