"""A lean inference forward for PEFT's LoRA layers in served views.

PEFT's `lora.Linear.forward` is general: it checks its arguments, looks up the active adapters,
casts dtypes, and calls four modules (the base layer, dropout, A, B) per layer. For a small
model decoding one token at a time on a CPU that bookkeeping, not the rank-r products, is most
of what an unmerged LoRA costs: SmolLM2-135M with LoRA on all seven projections has 210 such
layers, and every decoding step pays for each of them.

`fuse_lora(model)` gives each plain LoRA layer of `model` (one adapter, not merged, no DoRA or
other variant, no LoRA bias, an `nn.Linear` base) a forward that computes the same expression
with the same operations in the same order —
`F.linear(x, W, b) + F.linear(F.linear(x, A), B) * scaling` — so its outputs are bit for bit
PEFT's (tests compare them). Dropout is left out, so the fast forward is used only in eval
mode; in training mode, or for any layer it does not cover, PEFT's own forward runs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


def fuse_lora(model: nn.Module) -> int:
    """Give every eligible LoRA layer of `model` the lean forward; returns how many."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return 0
    count = 0
    for module in model.modules():
        if type(module) is LoraLinear and plain_lora(module):
            module.forward = _lean_forward(module, module.forward)
            count += 1
    return count


def plain_lora(layer) -> bool:
    """True for a PEFT LoRA layer this module (and a mixed batch) computes exactly: one active
    adapter, not merged, no variant, no bias, nn.Linear parts of one dtype."""
    active = list(layer.active_adapters)
    if len(active) != 1 or layer.merged or layer.disable_adapters:
        return False
    name = active[0]
    if name not in layer.lora_A or name in getattr(layer, "lora_variant", {}):
        return False
    base, a, b = layer.base_layer, layer.lora_A[name], layer.lora_B[name]
    linear = all(type(m) is nn.Linear for m in (base, a, b))
    same_dtype = a.weight.dtype == base.weight.dtype
    return linear and same_dtype and a.bias is None and b.bias is None


def _lean_forward(layer, peft_forward):
    name = layer.active_adapters[0]
    base, a, b = layer.base_layer, layer.lora_A[name], layer.lora_B[name]

    def forward(x, *args, **kwargs):
        if layer.training or args or kwargs or x.dtype != a.weight.dtype:
            return peft_forward(x, *args, **kwargs)
        result = F.linear(x, base.weight, base.bias)
        return result + F.linear(F.linear(x, a.weight), b.weight) * layer.scaling[name]

    return forward
