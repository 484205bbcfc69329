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
3. Fused SwiGLU MLP with LoRA on gate, up and down (llama, qwen2): down(silu(gate(x))·up(x))
   as one function that keeps x, gate(x) and up(x) for backward and recomputes silu(gate)·up
   there, instead of also keeping silu(gate) and the product (two of the five widest
   activations of a layer).
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
    fused = {id(m) for m in patched}
    mlps = [m for m in model.modules() if _swiglu_of_fusable(m, fused)]
    for module in mlps:
        module.forward = partial(_fused_mlp_forward, module, module.forward)
    patched += mlps
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


def _lora_parts(module, x: torch.Tensor) -> tuple | None:
    """(W, b, A, B, s) of a fusable LoRA layer for this call, or None where PEFT's own forward
    must run (adapter disabled or merged, several active, mixed precision, other dtypes)."""
    names = module.active_adapters
    if module.disable_adapters or module.merged or len(names) != 1:
        return None
    if torch.is_autocast_enabled(x.device.type):  # mixed precision: leave the casts to PEFT
        return None
    name = names[0]
    if name not in module.lora_A or x.dtype != module.lora_A[name].weight.dtype:
        return None
    base = module.base_layer
    return (base.weight, base.bias, module.lora_A[name].weight, module.lora_B[name].weight,
            module.scaling[name])  # fmt: skip


def _fused_forward(module, peft_forward, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    parts = None if args or kwargs else _lora_parts(module, x)
    if parts is None:
        return peft_forward(x, *args, **kwargs)
    return _LoraLinear.apply(x, *parts)


# ---------------------------------------------------------------- fused SwiGLU MLP


def _swiglu_of_fusable(module: nn.Module, fused: set[int]) -> bool:
    """A llama-style MLP, down(silu(gate(x)) * up(x)), whose three projections are fused LoRA
    layers without biases."""
    from transformers.activations import SiLUActivation

    projections = [getattr(module, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    if not isinstance(getattr(module, "act_fn", None), (SiLUActivation, nn.SiLU)):
        return False
    if any(p is None or id(p) not in fused or p.base_layer.bias is not None for p in projections):
        return False
    return "down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))" in _source(module)


def _source(module: nn.Module) -> str:
    import inspect

    try:
        return inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return ""


def _fused_mlp_forward(module, mlp_forward, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    gate, up, down = module.gate_proj, module.up_proj, module.down_proj
    parts = [None if args or kwargs else _lora_parts(p, x) for p in (gate, up, down)]
    if any(p is None or p[0].requires_grad for p in parts):  # only adapters train here
        return mlp_forward(x, *args, **kwargs)
    (wg, _, ag, bg, sg), (wu, _, au, bu, su), (wd, _, ad, bd, sd) = parts
    return _LoraSwiGLU.apply(x, wg, ag, bg, wu, au, bu, wd, ad, bd, (sg, su, sd))


class _LoraSwiGLU(torch.autograd.Function):
    """y = down(silu(g) · u), g = gate(x), u = up(x), each projection W plus s·BA (no bias).

    x (..., d); W_gate, W_up (m, d); W_down (d, m); A (r, in); B (out, r). Saved: x, g, u and
    the rank-r products; silu(g) and the product are recomputed in backward.
    """

    @staticmethod
    def forward(ctx, x, wg, ag, bg, wu, au, bu, wd, ad, bd, scalings):
        sg, su, sd = scalings
        flat = x.reshape(-1, x.shape[-1])  # (N, d)
        down_g, down_u = flat @ ag.t(), flat @ au.t()  # (N, r)
        g = F.linear(flat, wg).addmm_(down_g, bg.t(), alpha=sg)  # (N, m)
        u = F.linear(flat, wu).addmm_(down_u, bu.t(), alpha=su)  # (N, m)
        h = F.silu(g).mul_(u)  # (N, m): not kept
        down_d = h @ ad.t()  # (N, r)
        y = F.linear(h, wd).addmm_(down_d, bd.t(), alpha=sd)  # (N, d)
        ctx.save_for_backward(flat, g, u, down_g, down_u, down_d, wg, ag, bg, wu, au, bu, wd,
                              ad, bd)  # fmt: skip
        ctx.scalings, ctx.shape = scalings, x.shape
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_y):
        flat, g, u, down_g, down_u, down_d, wg, ag, bg, wu, au, bu, wd, ad, bd = ctx.saved_tensors
        sg, su, sd = ctx.scalings
        want = ctx.needs_input_grad
        grad_y = grad_y.reshape(-1, grad_y.shape[-1])  # (N, d)
        sigmoid = torch.sigmoid(g)  # (N, m)
        silu = g * sigmoid
        h = silu * u
        grad_down_d = (grad_y @ bd).mul_(sd)  # (N, r)
        grads = [None] * 11
        grads[8] = grad_down_d.t() @ h if want[8] else None  # A_down (r, m)
        grads[9] = (grad_y.t() @ down_d).mul_(sd) if want[9] else None  # B_down (d, r)
        del h
        grad_h = (grad_y @ wd).addmm_(grad_down_d, ad)  # (N, m)
        grad_u = grad_h * silu
        # d silu(g) / dg = sigmoid(g) · (1 + g · (1 - sigmoid(g)))
        grad_g = grad_h.mul_(u).mul_(sigmoid.mul_(g.mul(1 - sigmoid).add_(1)))
        del silu, sigmoid
        grad_down_g = (grad_g @ bg).mul_(sg)  # (N, r)
        grad_down_u = (grad_u @ bu).mul_(su)
        if want[2]:
            grads[2] = grad_down_g.t() @ flat  # A_gate (r, d)
        if want[3]:
            grads[3] = (grad_g.t() @ down_g).mul_(sg)  # B_gate (m, r)
        if want[5]:
            grads[5] = grad_down_u.t() @ flat
        if want[6]:
            grads[6] = (grad_u.t() @ down_u).mul_(su)
        if want[0]:
            grad_x = (grad_g @ wg).addmm_(grad_u, wu)  # (N, d)
            grad_x.addmm_(grad_down_g, ag).addmm_(grad_down_u, au)
            grads[0] = grad_x.view(ctx.shape)
        return tuple(grads)


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
