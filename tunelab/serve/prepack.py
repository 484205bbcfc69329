"""Base weights packed once for MKL's small-batch product, on the CPU (as Intel's extension for
PyTorch packs them for a batch size).

A decoding step multiplies a handful of rows (one per running request) by every weight of the
model. For 4 to 8 rows MKL's plain `sgemm` repacks the whole weight on every call, and on 2
cores that copy costs more than the product: SmolLM2-135M's 8-row step took 126 ms through
`F.linear` and 88 ms with every Linear's weight packed beforehand (`cblas_sgemm_pack`, the same
numbers to float32 rounding), its output layer 22.7 ms against 8.8. One to three rows take MKL's
matrix-vector path, which packs nothing, and from about a dozen rows on the plain product packs
as well as this does; so a pack serves `FEW` to `ROWS` rows only, the rows padded with zeros to
`ROWS` (each row of the product depends on its own row alone: tested). On other machines the
pack is slower than either plain product: `tunelab.serve.products` measures which to take.

The pack is a copy in MKL's own layout: it roughly doubles the memory the packed weights take
(+1.06 GB resident for SmolLM2-135M), the price of the faster step; `tunelab serve --no-prepack`
does without it.
"""

from __future__ import annotations

import torch

ROWS = 8  # the batch size the weights are packed for (the engine's default `max_batch`)
FEW = 4  # fewer rows take MKL's matrix-vector path, which is faster than the pack


def available() -> bool:
    """True where torch was built with MKL's packed product (x86 CPU wheels)."""
    try:
        return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
    except (AttributeError, RuntimeError):  # pragma: no cover - torch without the mkl ops
        return False


def pack(weight: torch.Tensor) -> torch.Tensor | None:
    """`weight` (out, in) packed for `ROWS` rows, or None where it cannot be (not a float32 CPU
    tensor, or no MKL)."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not available():
        return None
    with torch.no_grad():
        return torch.ops.mkl._mkl_reorder_linear_weight(weight.detach(), ROWS)


def packs(rows: int) -> bool:
    """Whether a product of `rows` rows is taken from the pack."""
    return FEW <= rows <= ROWS


def linear(x: torch.Tensor, weight: torch.Tensor, bias, packed: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, weight, bias)` from `packed` (`pack(weight)`), for `packs(rows)` rows."""
    features = x.shape[-1]
    rows = x.numel() // features
    flat = x.reshape(rows, features)
    if rows < ROWS:
        flat = torch.cat([flat, flat.new_zeros(ROWS - rows, features)])
    y = torch.ops.mkl._mkl_linear(flat, packed, weight, bias, ROWS)
    return y[:rows].view(*x.shape[:-1], weight.shape[0])
