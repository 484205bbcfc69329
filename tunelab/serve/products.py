"""Which product each Linear of the mixed view takes for a number of rows: measured on this
machine when the server starts.

A decoding step multiplies one row per running request by every weight of the model; a fold
(`tunelab.serve.fold`) a few dozen rows. On a CPU the same product can be taken three ways,
with the same sums in another order of rounding (equal to float32 precision, not bit for bit):

- `linear`: `F.linear`, `x @ Wᵀ` — the BLAS packs the weight on every call;
- `transposed`: `W @ xᵀ` (its transpose is the answer: no copy), where the weight is the
  streamed operand;
- `packed`: from the weight packed once for `prepack.ROWS` rows (MKL's packed product,
  `tunelab.serve.prepack`), for 4 to 8 rows only.

Which is fastest depends on the machine and on the row count, by wide margins and not
monotonically. SmolLM2-135M's mixed decoding step on 2 cores: on the hosts of this project's
earlier sessions the pack took an 8-row step from 126 to 88 ms and `transposed` won only for the
output layer (49,152 × 576) from 4 rows on; on an AMD EPYC host (AVX-512) the pack made steps
slower and `transposed` faster for 2 to 4 rows, the same as `linear` for 6 to 8 (steady steps,
the three interleaved, medians: 2 rows 75.6 / 75.0 / 44.7 ms packed / linear / transposed,
4 rows 77.2 / 64.6 / 51.8, 6 rows 78.7 / 62.4 / 66.7, 8 rows 81.7 / 72.3 / 71.7). So `measure`
times each way on the model's own weights at every row count of a step (1 to `prepack.ROWS`)
and, for the output layer, at fold sizes up to 64, and `Products.kind` answers from that table.
The layers' products of more rows (folds: the running rows and the joiners' prompt tokens) stay
`linear`: a `transposed` output is strided, and the norms, activations and additions after it
pay for that in proportion to the rows — on that host a fold of 8 running rows and two joiners
took 162 ms with the layers `transposed` against 127 `linear`, though the products alone timed
faster. `fixed` is the earlier hosts' rule, used without a measurement (tests, or
`Scheduler(measure=False)`).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunelab.serve import prepack

KINDS = ("linear", "transposed", "packed")
SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64)  # row counts measured
SAMPLE_BYTES = 64 << 20  # weights timed per pass: past a CPU's last-level cache, as in a step
MARGIN = 0.03  # another way is taken over `linear` only when this much faster


@dataclass(frozen=True)
class Products:
    """The kind of product per row count (its measured `sizes`: each size serves the row
    counts from it to the next), one table for the layers and one for the output layer."""

    sizes: tuple[int, ...]
    layers: tuple[str, ...]
    head: tuple[str, ...]

    def kind(self, rows: int, head: bool) -> str:
        """How to take a product of `rows` rows of the layers (or the output layer)."""
        place = max(0, bisect.bisect_right(self.sizes, rows) - 1)
        return (self.head if head else self.layers)[place]

    def describe(self) -> dict[str, dict[int, str]]:
        return {
            "layers": dict(zip(self.sizes, self.layers, strict=True)),
            "head": dict(zip(self.sizes, self.head, strict=True)),
        }


def fixed(packs: bool) -> Products:
    """The rule without a measurement: 4–8 rows from the pack where there is one, the output
    layer's other 4+ rows `transposed`, everything else `linear`."""
    layers = tuple("packed" if packs and prepack.packs(n) else "linear" for n in SIZES)
    head = tuple("packed" if packs and prepack.packs(n) else "transposed" if n >= 4 else "linear"
                 for n in SIZES)  # fmt: skip
    return Products(SIZES, layers, head)


def product(x: torch.Tensor, weight: torch.Tensor, bias, packed, kind: str) -> torch.Tensor:
    """`F.linear(x, weight, bias)` taken the way `kind` says (see the module docstring); a
    `packed` kind without a pack, or a row count the pack does not serve, is `linear`."""
    rows = x.numel() // x.shape[-1]
    if kind == "packed" and packed is not None and prepack.packs(rows):
        return prepack.linear(x, weight, bias, packed)
    if kind != "transposed" or x.device.type != "cpu":
        return F.linear(x, weight, bias)
    y = (weight @ x.reshape(rows, -1).T).T.reshape(*x.shape[:-1], weight.shape[0])
    return y if bias is None else y + bias


def measure(
    layers: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    head: tuple[torch.Tensor, torch.Tensor | None],
    repeats: int = 3,
) -> Products:
    """Time every kind (`_kinds`) at every size of `SIZES` on `layers` ((weight, pack or None)
    of the model's Linears, in order; a strided sample of about `SAMPLE_BYTES`) and on `head`,
    each the fastest of `repeats` passes (the kinds interleaved, so that a busy moment of a shared
    machine falls on all); `linear` unless another is `MARGIN` faster."""
    total = sum(weight.numel() * weight.element_size() for weight, _ in layers)
    sample = list(layers[:: max(1, total // SAMPLE_BYTES)])
    best: dict[tuple[str, int, str], float] = {}
    with torch.inference_mode():
        for _ in range(repeats):
            for rows in SIZES:
                for part, weights in (("layers", sample), ("head", [head])):
                    kinds = _kinds(part, weights, rows)
                    for kind in kinds:
                        seconds = _time(weights, rows, kind) if len(kinds) > 1 else 0.0
                        key = (part, rows, kind)
                        best[key] = min(best.get(key, seconds), seconds)
    tables = {}
    for part in ("layers", "head"):
        chosen = []
        for rows in SIZES:
            times = {kind: best[(part, rows, kind)] for kind in KINDS if (part, rows, kind) in best}
            fastest = min(times, key=times.get)
            chosen.append(fastest if times[fastest] < (1 - MARGIN) * times["linear"] else "linear")
        tables[part] = tuple(chosen)
    return Products(SIZES, tables["layers"], tables["head"])


def _kinds(part: str, weights: list, rows: int) -> list[str]:
    """The ways to time for `rows` rows of `part` (see the module docstring)."""
    if part == "layers" and rows > prepack.ROWS:
        return ["linear"]
    packed = all(pack is not None for _, pack in weights) and prepack.packs(rows)
    return ["linear", "transposed", *(["packed"] if packed else [])]


def _time(weights: list, rows: int, kind: str) -> float:
    """Seconds for one product of `rows` rows by each weight in turn, taken as `kind`."""
    inputs = {}
    for weight, _ in weights:
        features = weight.shape[1]
        if features not in inputs:
            inputs[features] = torch.randn(rows, features, dtype=weight.dtype)
    start = time.perf_counter()
    for weight, pack in weights:
        product(inputs[weight.shape[1]], weight, None, pack, kind)
    return time.perf_counter() - start
