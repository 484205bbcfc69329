"""BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked Language-models
(Ben Zaken et al. 2021), https://arxiv.org/abs/2106.10199.

Only bias terms train: those of the chosen projections and of the layer norms; all else stays
frozen. Architectures without projection biases (llama, gemma, parts of qwen2) get zero biases
added (`bitfit_bias`), so training starts from the base model exactly.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from tunelab.errors import ConfigError, MergeNotSupported
from tunelab.io import atomic_write_json
from tunelab.methods.base import Method, MethodContext, MethodSettings, freeze_all, method_field
from tunelab.models.arch import arch_of, decoder_layers

BITFIT_REPORT = "bitfit_biases.json"  # which biases were added, written next to the weights
BIAS_FLAGS = ("attention_bias", "mlp_bias")  # config switches that give projections biases


class BitFitSettings(MethodSettings):
    name: str = "bitfit"
    targets: Literal["all", "attention", "mlp"] = method_field(
        "all", "projections whose biases train: all | attention | mlp"
    )
    add_missing: bool = method_field(
        True, "add zero biases to target projections that have none (llama, gemma, qwen2 o/MLP)"
    )
    norm_biases: bool = method_field(True, "also train layer-norm biases (bloom, gpt2)")


class BiasedLinear(nn.Linear):
    """A bias-free Linear given a trainable zero bias: x (..., in) -> x W^T + b, b (out,).

    It shares the original `weight` Parameter, so parameter names stay those of the base.
    """

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.register_parameter("bias", None)
        self.bitfit_bias = nn.Parameter(torch.zeros_like(linear.weight[:, 0]))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return super().forward(inputs) + self.bitfit_bias  # + 0 at init: exactly the base

    def plain(self) -> nn.Linear:
        """An ordinary nn.Linear with the learned bias as its own."""
        factory = {"dtype": self.weight.dtype, "device": "meta"}
        linear = nn.Linear(self.in_features, self.out_features, bias=True, **factory)
        linear.weight = self.weight
        linear.bias = nn.Parameter(self.bitfit_bias.detach().clone(), requires_grad=False)
        return linear


class BitFit(Method):
    name = "bitfit"
    paper = "Ben Zaken et al. 2021, BitFit: Simple Parameter-efficient Fine-tuning"
    idea = "train only the bias terms (adding zero biases where the model has none)"
    default_lr = 5e-3  # beat 1e-3 on SmolLM2-135M over 25 steps; only biases move
    mergeable = True
    Config: ClassVar[type[MethodSettings]] = BitFitSettings

    def apply(self, model: nn.Module, cfg: BitFitSettings, ctx: MethodContext) -> nn.Module:
        freeze_all(model)
        for parent, attribute, module in target_projections(model, cfg.targets):
            if module.bias is not None:
                module.bias.requires_grad_(True)
            elif cfg.add_missing and type(module) is nn.Linear:
                setattr(parent, attribute, BiasedLinear(module))
        if cfg.norm_biases:
            for bias in norm_biases(model):
                bias.requires_grad_(True)
        if not any(param.requires_grad for param in model.parameters()):
            raise ConfigError("method: bitfit found no bias to train; set method.add_missing=true")
        return model

    def save(self, model: nn.Module, cfg: MethodSettings, directory: Path) -> None:
        super().save(model, cfg, directory)
        added = self.added_biases(model)
        report = {"added_biases": len(added), "added_bias_modules": added}
        atomic_write_json(directory / BITFIT_REPORT, report)

    def merge(self, model: nn.Module, cfg: MethodSettings) -> nn.Module:
        """Turn every added bias into a real one and switch on the config flags that declare
        them, so `from_pretrained` of the saved result rebuilds the same model."""
        added = self.added_biases(model)
        if not added:
            return model  # native biases trained in place: already a plain model
        flags = bias_flags(model, added)
        skeleton_biases = bias_slots(model, flags)
        missing = [name for name in added if name not in skeleton_biases]
        if missing:
            raise MergeNotSupported(
                f"bitfit: {model.config.model_type} cannot declare a bias on {missing[0]} (its "
                "config has no switch for it), so the merged model would not load; pick "
                "method.targets the config can declare, set method.add_missing=false, or serve "
                "the run unmerged"
            )
        for name in sorted(skeleton_biases):
            _give_bias(model, name)
        for flag in flags:
            setattr(model.config, flag, True)  # the config object every submodule shares
        return model

    def added_biases(self, model: nn.Module) -> list[str]:
        """Module names of the projections that received an added bias."""
        return [name for name, module in model.named_modules() if isinstance(module, BiasedLinear)]


def target_projections(model: nn.Module, targets: str) -> list[tuple[nn.Module, str, nn.Module]]:
    """(sublayer, attribute, projection) for each target projection in every decoder block."""
    spec = arch_of(model)
    chosen = []
    if targets in ("all", "attention"):
        chosen.append((spec.attention, spec.attention_projections))
    if targets in ("all", "mlp"):
        chosen.append((spec.mlp, spec.mlp_projections))
    found = []
    for block in decoder_layers(model):
        for sublayer_name, projections in chosen:
            sublayer = getattr(block, sublayer_name)
            found += [(sublayer, p, getattr(sublayer, p)) for p in projections]
    return found


def norm_biases(model: nn.Module) -> list[nn.Parameter]:
    """Bias of every normalisation module that has one (LayerNorm; RMSNorm has none)."""
    modules = [m for m in model.modules() if "norm" in type(m).__name__.lower()]
    return [m.bias for m in modules if getattr(m, "bias", None) is not None]


def bias_flags(model: nn.Module, added: list[str]) -> list[str]:
    """The config flags (of those the config has) that declare biases where some were added."""
    spec = arch_of(model)
    return [
        flag
        for flag, sublayer in zip(BIAS_FLAGS, (spec.attention, spec.mlp), strict=True)
        if hasattr(model.config, flag) and any(f".{sublayer}." in name for name in added)
    ]


def bias_slots(model: nn.Module, flags: list[str]) -> set[str]:
    """Module names of the Linear layers that have a bias once `flags` are switched on (found by
    building the model on the meta device, which allocates nothing)."""
    config = copy.deepcopy(model.config)
    for flag in flags:
        setattr(config, flag, True)
    with torch.device("meta"):
        skeleton = type(model)(config)
    return {
        name
        for name, module in skeleton.named_modules()
        if isinstance(module, nn.Linear) and module.bias is not None
    }


def _give_bias(model: nn.Module, name: str) -> None:
    """Make the Linear at `name` a plain one with a bias: the learned one, else zeros."""
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    module = getattr(parent, attribute)
    if isinstance(module, BiasedLinear):
        setattr(parent, attribute, module.plain())
    elif module.bias is None:
        module.bias = nn.Parameter(torch.zeros_like(module.weight[:, 0]), requires_grad=False)
