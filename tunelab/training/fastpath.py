"""Fast paths for training, switched on around the step loop by `fast_paths(model, packing)`.

Each gives the same outputs and gradients as the code it stands in for (tests/training check
this); they only remove work and, on a CPU, the number of separate kernels per step, which is
what costs most when elementwise passes are memory-bound and threads share cores.

1. Packed rows (`tunelab.training.packed`): per-example attention without an (L, L) mask,
   and the prompt prefix the examples of a row share computed once.
2. Fused LoRA. PEFT computes base(x) + B(A(x)) * s as five kernels forward and about eight
   backward (two of them full-size passes for `* s` and `+`). `_LoraLinear` does it as
   base(x) then an in-place addmm of s·(xAᵀ)Bᵀ, and writes its own backward, accumulating both
   paths of the input gradient into one tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.training.packed import packed_attention


@contextmanager
def fast_paths(
    model: nn.Module, packing: bool = True, share_prefixes: bool = True
) -> Iterator[None]:
    """Within the block: packed rows attend per example and store a shared prompt prefix once
    (if `packing`; `share_prefixes=False` keeps every example whole), LoRA layers are fused."""
    with ExitStack() as stack:
        if packing:
            stack.enter_context(packed_attention(model, share_prefixes))
        stack.enter_context(fused_lora(model))
        yield


# ---------------------------------------------------------------- fused LoRA


@contextmanager
def fused_lora(model: nn.Module) -> Iterator[None]:
    """Within the block, plain LoRA layers (one adapter, no dropout, no DoRA, nn.Linear base)
    run as `_LoraLinear`; any layer or call outside that case keeps PEFT's forward."""
    patched = [m for m in model.modules() if _fusable(m)]
    for module in patched:
        module.forward = partial(_fused_forward, module, module.forward)
    try:
        yield
    finally:
        for module in patched:
            del module.forward  # back to the class's forward


def _fusable(module: nn.Module) -> bool:
    from peft.tuners.lora.layer import Linear as LoraLinear

    if not isinstance(module, LoraLinear) or type(module.base_layer) is not nn.Linear:
        return False
    if len(module.lora_A) != 1 or module.lora_variant:  # several adapters, DoRA and such
        return False
    name = next(iter(module.lora_A))
    return isinstance(module.lora_dropout[name], nn.Identity) and module.lora_B[name].bias is None


def _fused_forward(module, peft_forward, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    names = module.active_adapters
    if args or kwargs or module.disable_adapters or module.merged or len(names) != 1:
        return peft_forward(x, *args, **kwargs)
    if torch.is_autocast_enabled(x.device.type):  # mixed precision: leave the casts to PEFT
        return peft_forward(x, *args, **kwargs)
    name = names[0]
    if name not in module.lora_A or x.dtype != module.lora_A[name].weight.dtype:
        return peft_forward(x, *args, **kwargs)
    base = module.base_layer
    return _LoraLinear.apply(
        x,
        base.weight,
        base.bias,
        module.lora_A[name].weight,
        module.lora_B[name].weight,
        module.scaling[name],
    )


class _LoraLinear(torch.autograd.Function):
    """y = x Wᵀ + b + s·(x Aᵀ) Bᵀ for x (..., in), W (out, in), A (r, in), B (out, r)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling):
        flat = x.reshape(-1, x.shape[-1])  # (N, in)
        down = flat @ lora_a.t()  # (N, r)
        out = F.linear(flat, weight, bias)  # (N, out)
        out.addmm_(down, lora_b.t(), alpha=scaling)
        ctx.save_for_backward(flat, down, weight, lora_a, lora_b)
        ctx.scaling, ctx.shape = scaling, x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        flat, down, weight, lora_a, lora_b = ctx.saved_tensors
        want_x, want_w, want_bias, want_a, want_b, _ = ctx.needs_input_grad
        grad = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
        grad_down = (grad @ lora_b).mul_(ctx.scaling)  # (N, r)
        grad_x = grad_w = grad_bias = grad_a = grad_b = None
        if want_x:
            grad_x = (grad @ weight).addmm_(grad_down, lora_a).view(ctx.shape)  # (..., in)
        if want_w:
            grad_w = grad.t() @ flat  # (out, in)
        if want_bias:
            grad_bias = grad.sum(0)
        if want_a:
            grad_a = grad_down.t() @ flat  # (r, in)
        if want_b:
            grad_b = (grad.t() @ down).mul_(ctx.scaling)  # (out, r)
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None
