"""The method seam: what a fine-tuning method may do to a model, and nothing more.

A method is a config type plus `apply(model, cfg, ctx) -> model` (freeze, inject, mark
trainable). Optional hooks: `param_groups` (per-group learning rates, e.g. discriminative
LRs), `on_step` (e.g. gradual unfreezing), and save / load / merge of what it trained.
The training loop talks to methods only through this class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.config import MethodSettings
from tunelab.errors import MergeNotSupported, TunelabError
from tunelab.io import atomic_write_json

ADAPTER_CONFIG = "tunelab_adapter.json"  # our methods' config file inside adapter/
ADAPTER_WEIGHTS = "adapter.safetensors"  # our methods' trained tensors inside adapter/


@dataclass
class MethodContext:
    """What a method may read while applying itself (never the optimizer or the loop)."""

    calibration_batches: Callable[[], Iterable[dict[str, torch.Tensor]]] | None = None
    loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None = None
    total_steps: int = 0
    tokenizer: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class Method:
    """Default behaviour; a method overrides what it changes."""

    name: ClassVar[str]
    paper: ClassVar[str] = ""
    idea: ClassVar[str] = ""
    default_lr: ClassVar[float] = 1e-4
    mergeable: ClassVar[bool] = True
    supports_packing: ClassVar[bool] = True  # False: each example needs a row of its own
    Config: ClassVar[type[MethodSettings]] = MethodSettings
    artifact_files: ClassVar[tuple[str, ...]] = (ADAPTER_WEIGHTS,)  # what `load` reads

    # --- applying -----------------------------------------------------------------------
    def check(self, model: nn.Module, cfg: MethodSettings) -> None:
        """Raise `ConfigError` for settings this model cannot take, before any work starts
        (the loop calls it right after loading the base). Default: nothing to check."""

    def apply(self, model: nn.Module, cfg: MethodSettings, ctx: MethodContext) -> nn.Module:
        raise NotImplementedError

    def param_groups(
        self, model: nn.Module, cfg: MethodSettings, lr: float, weight_decay: float
    ) -> list[dict[str, Any]]:
        """Optimizer groups: no weight decay on biases and norms."""
        return default_param_groups(model, lr, weight_decay)

    def on_step(self, model: nn.Module, cfg: MethodSettings, step: int, total_steps: int) -> None:
        """Called before each optimizer step `step` (0-based). Default: nothing."""

    # --- artifacts ----------------------------------------------------------------------
    def save(self, model: nn.Module, cfg: MethodSettings, directory: Path) -> None:
        """Write what trained to `directory` (already a fresh temporary folder)."""
        save_file(_contiguous(trainable_state(model)), str(directory / ADAPTER_WEIGHTS))
        atomic_write_json(directory / ADAPTER_CONFIG, cfg.model_dump(mode="json"))

    def load(self, base: nn.Module, cfg: MethodSettings, directory: Path) -> nn.Module:
        """Apply the method to a fresh base and load its trained tensors."""
        model = self.apply(base, cfg, MethodContext())
        load_trained_tensors(model, load_file(str(directory / ADAPTER_WEIGHTS)))
        return model

    def check_artifact(self, directory: Path) -> None:
        """A one-line error naming the first file `load` would need and not find."""
        for name in self.artifact_files:
            if not (directory / name).is_file():
                raise TunelabError(f"{directory / name}: missing; the run's adapter is incomplete")
        if not any(directory.glob("*.safetensors")):
            raise TunelabError(f"{directory}: holds no .safetensors weights; incomplete run")

    def merge(self, model: nn.Module, cfg: MethodSettings) -> nn.Module:
        """Return a plain transformers model with the update folded into its weights."""
        raise MergeNotSupported(f"{self.name}: merging does not apply")

    # --- reporting ----------------------------------------------------------------------
    def trainable_names(self, model: nn.Module) -> list[str]:
        return [n for n, p in model.named_parameters() if p.requires_grad]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable tensors by name, detached (what a checkpoint holds)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def load_trained_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy `tensors` into the model's parameters by name; every name must exist."""
    params = dict(model.named_parameters())
    missing = [name for name in tensors if name not in params]
    if missing:
        raise KeyError(f"saved tensor {missing[0]!r} has no parameter in the model")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].dtype))


def freeze_all(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(False)


def default_param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied tensors count once."""
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared or strided storage: give each tensor its own copy."""
    return {k: v.detach().contiguous().clone() for k, v in tensors.items()}


def method_field(default: Any, description: str, **kwargs: Any) -> Any:
    """A method config field with help text (shown by `tunelab methods`)."""
    return Field(default, description=description, **kwargs)
