"""Parameter-Efficient Transfer Learning for NLP (Houlsby et al. 2019),
https://arxiv.org/abs/1902.00751.

A small bottleneck (down-projection, nonlinearity, up-projection, residual) follows the output
of each attention and MLP sublayer; the base model stays frozen and only the adapters train.
The up-projection starts at zero, so the adapted model equals the base model exactly at init.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from tunelab.errors import MergeNotSupported
from tunelab.methods.base import Method, MethodContext, MethodSettings, freeze_all, method_field
from tunelab.models.arch import arch_of, decoder_layers

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}
DOWN_INIT_STD = 1e-2  # small random down-projection; the zero up-projection gives identity


class AdapterSettings(MethodSettings):
    name: str = "adapter"
    size: int = method_field(64, "bottleneck width of each adapter", gt=0)
    placement: Literal["both", "mlp"] = method_field(
        "both", "both: after attention and MLP (Houlsby) | mlp: after the MLP only (Pfeiffer)"
    )
    nonlinearity: Literal["gelu", "relu", "silu"] = method_field(
        "gelu", "activation inside the bottleneck"
    )
    train_layer_norms: bool = method_field(
        False, "also train the layer norms, as Houlsby et al. do"
    )


class Bottleneck(nn.Module):
    """z -> z + up(act(down(z))) on hidden states (B, T, H); the bottleneck is (B, T, size)."""

    def __init__(self, hidden_size: int, size: int, nonlinearity: str, like: torch.Tensor):
        super().__init__()
        factory = {"dtype": like.dtype, "device": like.device}
        self.adapter_down = nn.Linear(hidden_size, size, **factory)
        self.adapter_up = nn.Linear(size, hidden_size, **factory)
        self.activation = ACTIVATIONS[nonlinearity]()
        with torch.no_grad():
            self.adapter_down.weight.normal_(0.0, DOWN_INIT_STD)
            self.adapter_down.bias.zero_()
            self.adapter_up.weight.zero_()
            self.adapter_up.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.adapter_up(self.activation(self.adapter_down(hidden)))


class AdaptedSublayer(nn.Module):
    """A sublayer (attention or MLP) whose output passes through a bottleneck adapter.

    Every argument reaches the wrapped sublayer untouched (masks, KV cache, position
    embeddings). Attention returns a tuple: only its first element, the hidden states
    (B, T, H), is adapted. Sublayers that take `residual` and add it themselves (BLOOM) get a
    zero residual, so the adapter sees the sublayer's own output; the residual is added after.
    """

    def __init__(self, base_layer: nn.Module, bottleneck: Bottleneck):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = bottleneck
        self.residual_inside = "residual" in inspect.signature(base_layer.forward).parameters

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        residual = None
        if self.residual_inside:
            args, kwargs, residual = _take_residual(args, kwargs)
        output = self.base_layer(*args, **kwargs)
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = self.adapter(hidden)
        if residual is not None:
            hidden = hidden + residual
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _take_residual(args: tuple, kwargs: dict) -> tuple[tuple, dict, torch.Tensor]:
    """Swap the `residual` argument (second positional or keyword) for zeros; return it."""
    if "residual" in kwargs:
        residual = kwargs["residual"]
        kwargs = {**kwargs, "residual": torch.zeros_like(residual)}
    else:
        residual = args[1]
        args = (args[0], torch.zeros_like(residual), *args[2:])
    return args, kwargs, residual


class BottleneckAdapter(Method):
    name = "adapter"
    paper = "Houlsby et al. 2019, Parameter-Efficient Transfer Learning for NLP"
    idea = "freeze the model, insert small bottleneck MLPs after attention and MLP sublayers"
    default_lr = 1e-3  # on par with 3e-4, better than 3e-3, on SmolLM2-135M over 25 steps
    mergeable = False
    Config: ClassVar[type[MethodSettings]] = AdapterSettings

    def apply(self, model: nn.Module, cfg: AdapterSettings, ctx: MethodContext) -> nn.Module:
        spec = arch_of(model)
        hidden_size = model.config.hidden_size
        like = next(model.parameters())
        sublayers = [spec.mlp] if cfg.placement == "mlp" else [spec.attention, spec.mlp]
        freeze_all(model)
        for block in decoder_layers(model):
            for attribute in sublayers:
                bottleneck = Bottleneck(hidden_size, cfg.size, cfg.nonlinearity, like)
                setattr(block, attribute, AdaptedSublayer(getattr(block, attribute), bottleneck))
        if cfg.train_layer_norms:
            for param in norm_parameters(model):
                param.requires_grad_(True)
        return model

    def merge(self, model: nn.Module, cfg: MethodSettings) -> nn.Module:
        raise MergeNotSupported(
            "adapter: the bottleneck applies a nonlinearity to the hidden states, which is not "
            "a change of any weight, so it cannot be folded into the base; serve it unmerged"
        )


def norm_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of every normalisation module (LayerNorm, RMSNorm), found by class name."""
    return [
        param
        for module in model.modules()
        if "norm" in type(module).__name__.lower()
        for param in module.parameters(recurse=False)
    ]
