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
4. Fused DoRA linear: c ⊙ (xWᵀ + s·(xAᵀ)Bᵀ) + b with c = m / ||W + s·BA|| as one function
   that keeps x, xAᵀ and its output for backward (m's gradient comes from the output), where
   PEFT keeps two more full-width tensors per layer (base(x) and B(A(x))).
5. Under mixed precision (bf16 / fp16 autocast) 2-4 compute in autocast's dtype, as
   autocast would, but cast each frozen base weight once per run instead of at every call,
   and the input q, k and v share once instead of three times (one low-dtype copy saved for
   backward, not three).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.compat import (
    dora_layer,
    dora_magnitude,
    fast_paths_enabled,
    lora_parts,
    patch_forward,
    plain_lora_layer,
    restore_forward,
    silu_modules,
)
from tunelab.models.arch import arch_of, decoder_layers
from tunelab.training.packed import packed_attention


@contextmanager
def fast_paths(
    model: nn.Module, packing: bool = True, share_prefixes: bool = True
) -> Iterator[None]:
    """Within the block: packed rows attend per example and store a shared prompt prefix once
    (if `packing`; `share_prefixes=False` keeps every example whole), LoRA layers are fused.
    Where the installed libraries are not the tested ones (`tunelab.compat`), nothing changes."""
    with ExitStack() as stack:
        if not fast_paths_enabled():
            yield
            return
        if packing:
            stack.enter_context(packed_attention(model, share_prefixes))
        stack.enter_context(fused_lora(model))
        yield


# ---------------------------------------------------------------- fused LoRA


@contextmanager
def fused_lora(model: nn.Module) -> Iterator[None]:
    """Within the block, plain LoRA layers (one adapter, no dropout, no DoRA, nn.Linear base)
    run as `_LoraLinear`, SwiGLU MLPs made of three of them as `_LoraSwiGLU`, and DoRA layers
    (the same conditions) as `_DoraLinear`; any layer or call outside that case keeps PEFT's
    forward. Under mixed precision (autocast) they compute
    in autocast's dtype, as autocast would, with the frozen weights cast once, not per call."""
    lowered = _Lowered()
    patched = [m for m in model.modules() if plain_lora_layer(m)]
    for module in patched:
        patch_forward(module, functools.partial(_fused_forward, lowered))
    mlps = _swiglu_mlps(model, {id(m) for m in patched})
    for module in mlps:
        patch_forward(module, functools.partial(_fused_mlp_forward, lowered))
    doras = [m for m in model.modules() if dora_layer(m)]
    for module in doras:
        patch_forward(module, functools.partial(_fused_dora_forward, lowered))
    try:
        yield
    finally:
        for module in patched + mlps + doras:
            restore_forward(module)


class _Lowered:
    """Tensors in autocast's dtype (bf16 / fp16), as autocast casts the inputs of a matmul.

    autocast casts a weight at every call (it caches only leaves that train), so a frozen base
    weight costs a full-size copy per layer and step. Here a frozen parameter is cast once and
    the copy kept while it is unchanged (same object, same version counter); anything else
    (activations, trainable parameters) is cast in the graph, so gradients flow back in their
    own dtype; an activation cast again by the next call (q, k and v read one input) is the
    same cast. The copies cost half the frozen fp32 weights' size in memory (a model loaded in
    the low dtype needs none). Lives for one `fused_lora` block."""

    def __init__(self) -> None:
        self.copies: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}
        self.last: tuple[torch.Tensor, int, torch.Tensor] | None = None  # the last activation

    def __call__(self, tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        if tensor is None or tensor.dtype == dtype:
            return tensor
        if not isinstance(tensor, nn.Parameter):  # an activation: in the graph
            return self._activation(tensor, dtype)
        if tensor.requires_grad:  # a trained weight: in the graph, at every call
            return tensor.to(dtype)
        held = self.copies.get(id(tensor))
        if held is None or held[0] is not tensor or held[1] != tensor._version:
            held = (tensor, tensor._version, tensor.detach().to(dtype))
            self.copies[id(tensor)] = held
        return held[2]

    def _activation(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`tensor.to(dtype)`, the same cast again for the input the previous call cast (q, k
        and v read one input): one cast in the graph, and the three input gradients summed in
        the low dtype before one cast back."""
        last = self.last
        if last is not None and last[0] is tensor and last[1] == tensor._version:
            if last[2].dtype == dtype and last[2].requires_grad == (
                tensor.requires_grad and torch.is_grad_enabled()
            ):
                return last[2]
        cast = tensor.to(dtype)
        self.last = (tensor, tensor._version, cast)
        return cast


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def _fused_forward(
    lowered: _Lowered, module, peft_forward, x: torch.Tensor, *args, **kwargs
) -> torch.Tensor:
    parts = None if args or kwargs else lora_parts(module)
    if parts is None:
        return peft_forward(x, *args, **kwargs)
    weight, bias, lora_a, lora_b, scaling = parts
    tensors = (x, weight, bias, lora_a, lora_b)
    return _run_fused(_LoraLinear, lowered, tensors, scaling, lambda: peft_forward(x))


def _run_fused(function, lowered: _Lowered, tensors: tuple, constants, fallback) -> torch.Tensor:
    """`function.apply(*tensors, constants)` (tensors[0] is the input): under autocast in its
    dtype, else as they are where they all share the input's dtype, else `fallback()`."""
    x = tensors[0]
    low = _autocast_dtype(x)
    if low is None:
        if any(t is not None and t.dtype != x.dtype for t in tensors):
            return fallback()
        return function.apply(*tensors, constants)
    with torch.autocast(x.device.type, enabled=False):
        return function.apply(*(lowered(t, low) for t in tensors), constants)


# ---------------------------------------------------------------- fused SwiGLU MLP


def _swiglu_mlps(model: nn.Module, fused: set[int]) -> list[nn.Module]:
    """The MLPs that compute down(silu(gate(x)) * up(x)) (the architecture table says which
    families do) with all three projections among the `fused` LoRA layers, in layer order."""
    inner = getattr(model, "module", model)  # under DistributedDataParallel
    spec = arch_of(inner)
    if not spec.gated_mlp:
        return []
    mlps = [getattr(layer, spec.mlp) for layer in decoder_layers(inner)]
    return [
        mlp
        for mlp in mlps
        if isinstance(getattr(mlp, "act_fn", None), silu_modules())
        and all(id(getattr(mlp, name)) in fused for name in spec.mlp_projections)
    ]


def _fused_mlp_forward(
    lowered: _Lowered, module, mlp_forward, x: torch.Tensor, *args, **kwargs
) -> torch.Tensor:
    gate, up, down = module.gate_proj, module.up_proj, module.down_proj
    parts = [None if args or kwargs else lora_parts(p) for p in (gate, up, down)]
    if any(p is None or p[0].requires_grad or p[1] is not None for p in parts):
        return mlp_forward(x, *args, **kwargs)  # only adapters train here, and no biases
    (wg, _, ag, bg, sg), (wu, _, au, bu, su), (wd, _, ad, bd, sd) = parts
    tensors = (x, wg, ag, bg, wu, au, bu, wd, ad, bd)
    return _run_fused(_LoraSwiGLU, lowered, tensors, (sg, su, sd), lambda: mlp_forward(x))


class _LoraSwiGLU(torch.autograd.Function):
    """y = down(silu(g) · u), g = gate(x), u = up(x), each projection W plus s·BA (no bias).

    x (..., d); W_gate, W_up (m, d); W_down (d, m); A (r, in); B (out, r). Saved: x, g, u and
    the rank-r products; silu(g) and the product are recomputed in backward.
    """

    @staticmethod
    def forward(ctx, x, wg, ag, bg, wu, au, bu, wd, ad, bd, scalings):
        sg, su, sd = scalings
        flat = x.reshape(-1, x.shape[-1])  # (N, d)
        g, down_g = _lora_linear(flat, wg, None, ag, bg, sg)  # (N, m), (N, r)
        u, down_u = _lora_linear(flat, wu, None, au, bu, su)
        h = F.silu(g).mul_(u)  # (N, m): not kept
        y, down_d = _lora_linear(h, wd, None, ad, bd, sd)  # (N, d)
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
        grads: list[torch.Tensor | None] = [None] * 11
        grad_down_d, grads[8], grads[9] = _lora_grads(grad_y, h, down_d, ad, bd, sd, *want[8:10])
        del h
        grad_h = (grad_y @ wd).addmm_(grad_down_d, ad)  # (N, m)
        grad_u = grad_h * silu
        # d silu(g) / dg = sigmoid(g) · (1 + g · (1 - sigmoid(g)))
        grad_g = grad_h.mul_(u).mul_(sigmoid.mul_(g.mul(1 - sigmoid).add_(1)))
        del silu, sigmoid
        grad_down_g, grads[2], grads[3] = _lora_grads(grad_g, flat, down_g, ag, bg, sg, *want[2:4])
        grad_down_u, grads[5], grads[6] = _lora_grads(grad_u, flat, down_u, au, bu, su, *want[5:7])
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
        out, down = _lora_linear(flat, weight, bias, lora_a, lora_b, scaling)  # (N, out), (N, r)
        ctx.save_for_backward(flat, down, weight, lora_a, lora_b)
        ctx.scaling, ctx.shape = scaling, x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        flat, down, weight, lora_a, lora_b = ctx.saved_tensors
        want_x, want_w, want_bias, want_a, want_b, _ = ctx.needs_input_grad
        grad = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
        grad_down, grad_a, grad_b = _lora_grads(
            grad, flat, down, lora_a, lora_b, ctx.scaling, want_a, want_b
        )
        grad_x = grad_w = grad_bias = None
        if want_x:
            grad_x = (grad @ weight).addmm_(grad_down, lora_a).view(ctx.shape)  # (..., in)
        if want_w:
            grad_w = grad.t() @ flat  # (out, in)
        if want_bias:
            grad_bias = grad.sum(0)
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None


# ---------------------------------------------------------------- fused DoRA


def _fused_dora_forward(
    lowered: _Lowered, module, peft_forward, x: torch.Tensor, *args, **kwargs
) -> torch.Tensor:
    parts = None if args or kwargs else lora_parts(module)
    if parts is None or any(p is not None and p.requires_grad for p in parts[:2]):
        return peft_forward(x, *args, **kwargs)  # only the adapter trains here, not W or b
    weight, bias, lora_a, lora_b, scaling = parts
    magnitude = dora_magnitude(module)
    with torch.no_grad():  # ||W + s·BA|| per output row, a constant in backward (as PEFT's)
        norm = torch.linalg.norm(weight + scaling * (lora_b @ lora_a), dim=1)  # (out,)
    low = _autocast_dtype(x)
    products = (x, weight, bias, lora_a, lora_b)
    if low is None:
        if any(t is not None and t.dtype != x.dtype for t in (*products, magnitude)):
            return peft_forward(x)
        return _DoraLinear.apply(*products, magnitude, norm, scaling)
    with torch.autocast(x.device.type, enabled=False):  # the products in autocast's dtype
        lowered_products = [lowered(t, low) for t in products]
        return _DoraLinear.apply(*lowered_products, magnitude, norm, scaling)


class _DoraLinear(torch.autograd.Function):
    """y = c ⊙ (x Wᵀ + s·(x Aᵀ) Bᵀ) + b, c = m / ||W + s·BA|| per output row (DoRA; the norm
    a constant in backward, as in the paper and PEFT) — what PEFT computes as base(x) +
    (c - 1) ⊙ (base(x) - b) + c ⊙ s·B(A(x)).

    PEFT keeps two (N, out) tensors per layer for backward (base(x) and B(A(x))); this keeps
    x, the rank-r x Aᵀ and y itself, which the next op often keeps anyway (SiLU and the
    product of a gated MLP keep gate(x) and up(x)). m's gradient, Σₙ g ⊙ (x Wᵀ + s·(x Aᵀ) Bᵀ)
    / ||W + s·BA||, is then Σₙ g ⊙ (y - b) / m; where some m is (near) zero the product is
    recomputed instead. c and m's gradient stay in m's dtype (fp32 under autocast, where PEFT's
    sum is fp32 too)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, magnitude, norm, scaling):
        flat = x.reshape(-1, x.shape[-1])  # (N, in)
        out, down = _lora_linear(flat, weight, None, lora_a, lora_b, scaling)  # (N, out), (N, r)
        scale = magnitude / norm  # (out,)
        y = out.to(scale.dtype).mul_(scale)  # in place where the dtypes agree
        if bias is not None:
            y = y.add_(bias)
        ctx.save_for_backward(flat, down, weight, bias, lora_a, lora_b, magnitude, norm, y)
        ctx.scaling, ctx.shape = scaling, x.shape
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_y):
        flat, down, weight, bias, lora_a, lora_b, magnitude, norm, y = ctx.saved_tensors
        want_x, _, want_bias, want_a, want_b, want_m, _, _ = ctx.needs_input_grad
        grad_y = grad_y.reshape(-1, grad_y.shape[-1])  # (N, out)
        grad_out = (grad_y * (magnitude / norm)).to(flat.dtype)  # at x Wᵀ + s·(x Aᵀ) Bᵀ
        grad_down, grad_a, grad_b = _lora_grads(
            grad_out, flat, down, lora_a, lora_b, ctx.scaling, want_a, want_b
        )
        grad_x = grad_bias = grad_m = None
        if want_m and bool((magnitude.abs() > 1e-6 * norm).all()):  # from y: Σ g(y - b) / m
            grad_m = torch.linalg.vecdot(grad_y, y, dim=0)  # (out,)
            if bias is not None:
                grad_m -= grad_y.sum(0) * bias.to(grad_m.dtype)
            grad_m = grad_m.div_(magnitude).to(magnitude.dtype)
        elif want_m:  # recomputed: Σ g(x Wᵀ + s·(x Aᵀ) Bᵀ) / ||W + s·BA||
            out = F.linear(flat, weight).addmm_(down, lora_b.t(), alpha=ctx.scaling)
            grad_m = torch.linalg.vecdot(grad_y, out.to(grad_y.dtype), dim=0)
            grad_m = grad_m.div_(norm).to(magnitude.dtype)
        if want_x:
            grad_x = (grad_out @ weight).addmm_(grad_down, lora_a).view(ctx.shape)
        if want_bias:
            grad_bias = grad_y.sum(0)
        return grad_x, None, grad_bias, grad_a, grad_b, grad_m, None, None


def _lora_linear(flat, weight, bias, lora_a, lora_b, scaling):
    """(x Wᵀ + b + s·(x Aᵀ) Bᵀ, x Aᵀ) for x (N, in): the base GEMM plus one in-place addmm."""
    down = flat @ lora_a.t()  # (N, r)
    return F.linear(flat, weight, bias).addmm_(down, lora_b.t(), alpha=scaling), down


def _lora_grads(grad, flat, down, lora_a, lora_b, scaling, want_a: bool, want_b: bool):
    """For the output gradient `grad` (N, out) of `_lora_linear`: the gradient at x Aᵀ (N, r)
    (the input gradient adds it times A), and those of A (r, in) and B (out, r) where wanted."""
    grad_down = (grad @ lora_b).mul_(scaling)  # (N, r)
    grad_a = grad_down.t() @ flat if want_a else None
    grad_b = (grad.t() @ down).mul_(scaling) if want_b else None
    return grad_down, grad_a, grad_b
