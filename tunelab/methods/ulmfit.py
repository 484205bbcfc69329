"""Universal Language Model Fine-tuning for Text Classification (Howard & Ruder 2018),
https://arxiv.org/abs/1801.06146.

Every weight trains, in layer groups (embeddings, each decoder block, final norm + head).
Discriminative fine-tuning gives the group d groups below the top the rate lr / factor^d;
gradual unfreezing starts with the top group only and unfreezes one more group at a time.
Its schedule is slanted triangular: set `train.schedule: stlr` (see tunelab/training/schedules.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch import nn
from transformers import AutoModelForCausalLM

from tunelab.io import atomic_write_json
from tunelab.methods.base import ADAPTER_CONFIG, Method, MethodContext, MethodSettings, method_field
from tunelab.methods.full import save_full_model
from tunelab.models.arch import arch_of, decoder_layers, get_submodule

NamedParameters = list[tuple[str, nn.Parameter]]


class UlmfitSettings(MethodSettings):
    name: str = "ulmfit"
    factor: float = method_field(
        2.6, "discriminative LRs: each group down from the top gets lr / factor", ge=1
    )
    discriminative: bool = method_field(True, "per-group learning rates (else one lr for all)")
    gradual_unfreezing: bool = method_field(True, "start with the top group, unfreeze downwards")
    unfreeze_every: int | None = method_field(
        None,
        "optimizer steps between unfreezing groups; default total_steps / groups; 0: no "
        "gradual unfreezing",
        ge=0,
    )


class Ulmfit(Method):
    name = "ulmfit"
    paper = "Howard & Ruder 2018, Universal Language Model Fine-tuning for Text Classification"
    idea = "full fine-tuning with per-layer learning rates and gradual unfreezing (top first)"
    default_lr = 1e-4
    mergeable = True
    Config: ClassVar[type[MethodSettings]] = UlmfitSettings
    artifact_files: ClassVar[tuple[str, ...]] = ("config.json",)  # + sharded weights

    def apply(self, model: nn.Module, cfg: UlmfitSettings, ctx: MethodContext) -> nn.Module:
        """Everything is trainable, so the optimizer holds every group from the start;
        `on_step(0)` then freezes the groups that wait their turn."""
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def param_groups(
        self, model: nn.Module, cfg: UlmfitSettings, lr: float, weight_decay: float
    ) -> list[dict[str, Any]]:
        """Two optimizer groups per layer group (weight decay on matrices only), with
        lr / factor^depth, depth 0 at the top. Frozen parameters are included: they wait."""
        groups = layer_groups(model)
        optimizer_groups = []
        for index, group in enumerate(groups):
            depth = len(groups) - 1 - index
            group_lr = lr / cfg.factor**depth if cfg.discriminative else lr
            decay = [p for n, p in group if p.ndim >= 2 and "norm" not in n]
            no_decay = [p for n, p in group if p.ndim < 2 or "norm" in n]
            for params, decay_rate in ((decay, weight_decay), (no_decay, 0.0)):
                if params:
                    optimizer_groups.append(
                        {
                            "params": params,
                            "lr": group_lr,
                            "weight_decay": decay_rate,
                            "layer_group": index,
                        }
                    )
        return optimizer_groups

    def on_step(self, model: nn.Module, cfg: UlmfitSettings, step: int, total_steps: int) -> None:
        """Freeze the groups not yet unfrozen at `step`, clearing their gradients so AdamW
        skips them entirely (no update, no weight decay): they stay bit-identical."""
        groups = layer_groups(model)
        first_trainable = len(groups) - unfrozen_groups(cfg, step, total_steps, len(groups))
        for index, group in enumerate(groups):
            for _, param in group:
                param.requires_grad_(index >= first_trainable)
                if index < first_trainable:
                    param.grad = None

    def save(self, model: nn.Module, cfg: MethodSettings, directory: Path) -> None:
        save_full_model(model, cfg, directory)
        atomic_write_json(directory / ADAPTER_CONFIG, cfg.model_dump(mode="json"))

    def load(self, base: nn.Module, cfg: MethodSettings, directory: Path) -> nn.Module:
        return AutoModelForCausalLM.from_pretrained(str(directory), dtype=base.dtype)

    def merge(self, model: nn.Module, cfg: MethodSettings) -> nn.Module:
        return model  # every weight trained in place: already a plain model


def unfrozen_groups(cfg: UlmfitSettings, step: int, total_steps: int, n_groups: int) -> int:
    """How many groups (counted from the top) train at `step`."""
    if not cfg.gradual_unfreezing or cfg.unfreeze_every == 0:
        return n_groups
    every = cfg.unfreeze_every or max(1, total_steps // n_groups)
    return min(n_groups, 1 + step // every)


def layer_groups(model: nn.Module) -> list[NamedParameters]:
    """Parameters in layer groups, bottom to top: [embeddings and the rest], block 0, ...,
    block L-1, [final norm + head]. Each parameter sits in one group only; a head tied to the
    embeddings lands in the top group, so the output layer trains from the first step. Empty
    groups (the bottom one when everything else is tied or inside blocks) are dropped."""
    spec = arch_of(model)
    names = {id(p): n for n, p in model.named_parameters()}
    seen: set[int] = set()

    def take(modules: list[nn.Module]) -> NamedParameters:
        found = []
        for module in modules:
            for param in module.parameters():
                if id(param) not in seen:
                    seen.add(id(param))
                    found.append((names[id(param)], param))
        return found

    top = take([get_submodule(model, spec.final_norm), get_submodule(model, spec.head)])
    blocks = [take([block]) for block in reversed(decoder_layers(model))]
    rest = take([model])
    return [group for group in [rest, *reversed(blocks), top] if group]
