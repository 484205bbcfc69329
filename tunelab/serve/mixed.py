"""Mixed-adapter batches: one forward of the shared base over rows of different served runs,
each row getting its own run's effect (per-row gathered deltas, as Punica and vLLM do for LoRA).

A run can join such a batch when everything it changes is a per-row term on top of a base
`nn.Linear` whose weight it shares, or lies in front of the prompt:

- LoRA (plain layers as `fastlora` fuses them, any rank): `+ B(A(x)) * scaling` for its rows,
  every LoRA run of the batch in one pair of small products (`RowLinear._stacked`);
- IA³: its rows' inputs (feed-forward layers) or outputs multiplied by its vector;
- BitFit whose biases were all *added* (`BiasedLinear`, zero at start): `+ bias` for its rows;
- prompt tuning and p-tuning: its learned virtual-token embeddings go in front of the row's
  prompt at prefill; every later step is a plain base step over the row's cache;
- the base itself: no term at all.

A row of another run gets ones and zeros, which leave its numbers untouched (x * 1 and x + 0
are exact), so each row computes what its run's own view computes. Runs that change anything
else — DoRA, prefix tuning (a KV prefix), bottleneck adapters, full fine-tuning, ULMFiT,
importance, LoRA with biases or on embeddings, BitFit that trained a native bias, a norm or
extended the vocabulary — yield no `RowDelta`, and the engine batches them on their own views.
Whether a run qualifies is decided from its view, not its method name alone: every parameter
the view does not share with the base must be one this module reads.

`Mixer` holds one more view of the base in which every Linear is a `RowLinear`; before a
forward the running batch sets the rows' deltas (`Mixer.use`), and each `RowLinear` builds its
per-row tensors once per distinct set of rows. Each takes its base product the way the plan's
`Products` says for the forward's row count (`tunelab.serve.products`: measured on the machine
by `Mixer.measure`), with `pack` from its weight packed for MKL's small-batch product
(`tunelab.serve.prepack`) where that is the fastest.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import nn

from tunelab.methods.bitfit import BiasedLinear
from tunelab.serve import prepack, products
from tunelab.serve.adapters import PEFT_PREFIX, shared_view
from tunelab.serve.fastlora import plain_lora
from tunelab.serve.products import Products

MIXABLE = {"lora", "ia3", "bitfit", "prompt", "ptuning"}  # methods whose views may qualify


@dataclass(eq=False)
class LayerDelta:
    """What one run adds at one base Linear (each field None where it adds nothing)."""

    weight: torch.Tensor  # the base weight the run's layer uses (must be the mixer's own)
    lora: tuple[torch.Tensor, torch.Tensor, float] | None = None  # A (r, in), B (out, r), scale
    scale_in: torch.Tensor | None = None  # IA³ on a feed-forward layer: x * s, (in,)
    scale_out: torch.Tensor | None = None  # IA³ elsewhere: y * s, (out,)
    bias: torch.Tensor | None = None  # BitFit's added bias, (out,)


@dataclass(eq=False)
class RowDelta:
    """Everything one served run changes, in a form a mixed batch applies per row."""

    layers: dict[str, LayerDelta] = field(default_factory=dict)  # base module name -> delta
    virtual: torch.Tensor | None = None  # (V, H) prompt-tuning embeddings before the prompt
    serial: int = field(default_factory=itertools.count().__next__)  # names it in plan keys


def row_delta(model: nn.Module, method: str, base: nn.Module) -> RowDelta | None:
    """`model` (a served view of `base`) as per-row deltas, or None when it changes anything a
    mixed batch cannot apply per row."""
    if method not in MIXABLE:
        return None
    from peft.tuners.ia3.layer import Linear as IA3Linear
    from peft.tuners.lora.layer import Linear as LoraLinear

    delta, read = RowDelta(), set()
    shared = {id(tensor) for tensor in [*base.parameters(), *base.buffers()]}
    for name, module in model.named_modules():
        name = name.removeprefix(PEFT_PREFIX)
        if type(module) is LoraLinear:
            layer = _lora(module, read)
        elif type(module) is IA3Linear:
            layer = _ia3(module, read)
        elif type(module) is BiasedLinear:
            layer = LayerDelta(module.weight, bias=module.bitfit_bias.detach())
            read.add(id(module.bitfit_bias))
        else:
            continue
        if layer is None:
            return None
        delta.layers[name] = layer
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        delta.virtual = _virtual(model, read)
        if delta.virtual is None:
            return None
    own = [id(t) for t in [*model.parameters(), *model.buffers()] if id(t) not in shared]
    if any(tensor not in read for tensor in own):
        return None  # the view holds something of its own this module does not apply
    weights = [layer.weight for layer in delta.layers.values()]
    if any(id(weight) not in shared for weight in weights):
        return None
    return delta


def _lora(layer, read: set) -> LayerDelta | None:
    if not plain_lora(layer):
        return None
    name = layer.active_adapters[0]
    a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
    read.update({id(a), id(b)})
    base = layer.base_layer
    return LayerDelta(base.weight, lora=(a.detach(), b.detach(), layer.scaling[name]))


def _ia3(layer, read: set) -> LayerDelta | None:
    active = list(layer.active_adapters)
    base = layer.base_layer
    if len(active) != 1 or layer.merged or layer.disable_adapters or type(base) is not nn.Linear:
        return None
    vector = layer.ia3_l[active[0]]
    if vector.dtype != base.weight.dtype:
        return None
    read.add(id(vector))
    scale = vector.detach().flatten()
    if layer.is_feedforward:
        return LayerDelta(base.weight, scale_in=scale)
    return LayerDelta(base.weight, scale_out=scale)


def _virtual(model, read: set) -> torch.Tensor | None:
    """The (V, H) embeddings prompt tuning or p-tuning puts before every prompt."""
    from peft import PeftType

    if model.active_peft_config.peft_type not in (PeftType.PROMPT_TUNING, PeftType.P_TUNING):
        return None  # prefix tuning: a KV prefix, not embeddings
    encoder = model.prompt_encoder[model.active_adapter]
    read.update(id(parameter) for parameter in encoder.parameters())
    with torch.inference_mode():
        return model.get_prompt(1)[0].detach()


class Plan:
    """The deltas of the rows of the next forward, in row order (None: the base), and each of
    their runs with its rows (a slice where they are consecutive, else an index tensor)."""

    def __init__(self, device: torch.device, taken: Products) -> None:
        self.device = device
        self.products = taken  # how the base products are taken (`tunelab.serve.products`)
        self.rows: tuple[RowDelta | None, ...] = ()
        self.key: tuple[int, ...] = ()
        self.runs: list[tuple[RowDelta, slice | torch.Tensor]] = []  # by first row
        self.scalings: dict[tuple, torch.Tensor] = {}  # LoRA runs' scaling per row (`_stacked`)
        self.which: dict[tuple, torch.Tensor] = {}  # runs -> each row's place among them (`_table`)


class RowLinear(nn.Module):
    """A base Linear that adds each row's own delta (see the module docstring)."""

    def __init__(
        self, linear: nn.Linear, name: str, plan: Plan, packed=None, head: bool = False
    ) -> None:  # fmt: skip
        super().__init__()
        self.linear, self.name, self.plan = linear, name, plan
        self.packed = packed  # the weight packed for a few rows (`prepack.pack`), or None
        self.head = head  # the output layer (its own table in `Products`)
        self.prepared: dict[tuple, tuple | None] = {}  # plan key -> per-row tensors
        self.vectors: dict[tuple, torch.Tensor] = {}  # (field, runs) -> their vectors (`_table`)
        self.stacked: dict[tuple, tuple] = {}  # LoRA runs present -> their stacked pairs

    @property
    def weight(self) -> torch.Tensor:  # as the Linear's (`get_output_embeddings().weight`)
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prepared = self.prepared.get(self.plan.key, False)
        if prepared is False:
            if len(self.prepared) > 8:  # plans come and go as rows join and leave
                self.prepared.clear()
            prepared = self.prepared[self.plan.key] = self._prepare()
        weight, bias = self.linear.weight, self.linear.bias
        kind = self.plan.products.kind(x.numel() // x.shape[-1], self.head)
        if prepared is None:
            return products.product(x, weight, bias, self.packed, kind)
        scale_in, scale_out, added, lora = prepared
        x_in = x if scale_in is None else x * scale_in
        y = products.product(x_in, weight, bias, self.packed, kind)
        if scale_out is not None:
            y.mul_(scale_out)  # y is this call's own tensor
        if added is not None:
            y.add_(added)
        if lora is not None:  # y += (x Aᵀ ⊙ each row's scaling) Bᵀ, every LoRA run at once
            a, b, scaling = lora
            low, alpha = torch.mm(x.reshape(-1, x.shape[-1]), a), 1.0
            if isinstance(scaling, float):  # one run on every row: in the product
                alpha = scaling
            else:
                low.view(x.shape[0], -1, low.shape[-1]).mul_(scaling)
            if y.is_contiguous():
                y.view(-1, y.shape[-1]).addmm_(low, b, alpha=alpha)
            else:  # a transposed product's output
                y = y + torch.mm(low, b).mul_(alpha).view(y.shape)
        return y

    def _prepare(self) -> tuple | None:
        """(scale_in, scale_out, bias, LoRA) for the plan's rows; None: nothing to add. Built
        per run present (a few), not per row: each run's rows are known to the plan.

        LoRA: every run's A stacked (in, Σr) and B (Σr, out), transposed for `mm`, and each
        row's scaling on its run's r columns, zeros on the others' (B, 1, Σr), so that one
        product of all rows applies every run's pair: another run's columns add exact zeros."""
        layers = [(delta, delta.layers.get(self.name), rows) for delta, rows in self.plan.runs]
        layers = [(delta, layer, rows) for delta, layer, rows in layers if layer is not None]
        if not layers:
            return None
        count = len(self.plan.rows)
        scale_in = self._table(layers, "scale_in", 1.0)
        scale_out = self._table(layers, "scale_out", 1.0)
        added = self._table(layers, "bias", 0.0)
        pairs = [(layer.lora, rows) for _, layer, rows in layers if layer.lora is not None]
        return scale_in, scale_out, added, self._stacked(pairs, count) if pairs else None

    def _table(self, layers: list, field: str, identity: float) -> torch.Tensor | None:
        """(B, 1, features): each row's run's vector `field` here, `identity` (1: a scale, 0: a
        bias) for rows of runs without one; None if no run has one. One gather per plan from
        the runs' vectors stacked behind an identity row (kept while those runs come and go
        together), by each row's place among them (the same for every layer those runs touch:
        built once a plan)."""
        present = [(delta, getattr(layer, field), rows) for delta, layer, rows in layers]
        present = [(delta, vector, rows) for delta, vector, rows in present if vector is not None]
        if not present:
            return None
        runs = tuple(delta.serial for delta, _, _ in present)
        vectors = self.vectors.get((field, runs))
        if vectors is None:
            if len(self.vectors) > 16:
                self.vectors.clear()
            identities = self.linear.weight.new_full((1, present[0][1].shape[0]), identity)
            stacked = [vector[None].to(identities.dtype) for _, vector, _ in present]
            vectors = torch.cat([identities, *stacked])
            self.vectors[(field, runs)] = vectors
        which = self.plan.which.get(runs)
        if which is None:  # 0: the identity row, k: the k-th run's vector
            which = torch.zeros(len(self.plan.rows), dtype=torch.long, device=self.plan.device)
            for place, (_, _, rows) in enumerate(present, start=1):
                which[rows] = place
            self.plan.which[runs] = which
        return vectors.index_select(0, which).unsqueeze(1)

    def _stacked(self, pairs: list, count: int) -> tuple:
        """(Aᵀ, Bᵀ, scaling) of the LoRA runs `pairs` ((A, B, scale), rows): the stacked pair
        kept per set of runs, the scaling a float when one run has every row."""
        key = tuple(id(a) for (a, _, _), _ in pairs)  # alive while kept in the value: unique
        stacked = self.stacked.get(key)
        if stacked is None:
            if len(self.stacked) > 8:
                self.stacked.clear()
            a = torch.cat([a for (a, _, _), _ in pairs]).t().contiguous()
            b = torch.cat([b for (_, b, _), _ in pairs], dim=1).t().contiguous()
            stacked = self.stacked[key] = (a, b, [a for (a, _, _), _ in pairs])
        (_, _, scale), rows = pairs[0]
        if len(pairs) == 1 and isinstance(rows, slice) and rows == slice(0, count):
            return stacked[0], stacked[1], float(scale)
        # the same for every layer these runs touch with these ranks and scales: built once a
        # plan (its rows objects live as long as the plan, and `use` empties the table with it)
        key = tuple((a.shape[0], float(scale), id(rows)) for (a, _, scale), rows in pairs)
        scaling = self.plan.scalings.get(key)
        if scaling is None:
            scaling = stacked[0].new_zeros(count, 1, stacked[0].shape[1])
            start = 0
            for (a, _, scale), rows in pairs:
                scaling[rows, :, start : start + a.shape[0]] = scale
                start += a.shape[0]
            self.plan.scalings[key] = scaling
        return stacked[0], stacked[1], scaling


def _rows(indices: list[int], device) -> slice | torch.Tensor:
    """A slice where the rows are consecutive (a view, no copy), else an index tensor."""
    if indices == list(range(indices[0], indices[-1] + 1)):
        return slice(indices[0], indices[-1] + 1)
    return torch.tensor(indices, device=device)


class Mixer:
    """A view of `base` whose Linears apply each row's delta; `use` sets the rows' deltas."""

    def __init__(self, base: nn.Module, pack: bool = False) -> None:
        self.base = base
        self.model = shared_view(base).eval()
        self.plan = Plan(
            next(base.parameters()).device, products.fixed(pack and prepack.available())
        )
        self.linears = {name: module for name, module in self.model.named_modules()
                        if type(module) is nn.Linear}  # fmt: skip
        self.installed: set[str] = set()
        self.pack = pack  # every Linear's weight packed for MKL's small-batch product too
        self.head = self.model.get_output_embeddings()
        self._install(self.linears)  # no run's delta there yet: for the products' sake

    def measure(self) -> Products:
        """Time the ways of taking the base products on this machine (`products.measure`) and
        take the fastest from now on (`take`)."""
        if self.plan.device.type != "cpu":
            return self.plan.products
        rows = self._rows()
        layers = [(row.linear.weight, row.packed) for row in rows if not row.head]
        head = next(((row.linear.weight, row.packed) for row in rows if row.head), None)
        self.take(products.measure(layers, head or layers[-1]))  # (no output Linear: unused)
        return self.plan.products

    def take(self, taken: Products) -> None:
        """Take the base products as `taken` says (a measurement of this machine, made on this
        mixer or an earlier one); packs no row count is taken from are dropped (memory back)."""
        for row in self._rows():
            if "packed" not in (taken.head if row.head else taken.layers):
                row.packed = None
        self.plan.products = taken

    def _rows(self) -> list[RowLinear]:
        return [module for module in self.model.modules() if type(module) is RowLinear]

    def accept(self, delta: RowDelta) -> bool:
        """Make room for `delta`'s layers; False when one is not a Linear of this base."""
        for name, layer in delta.layers.items():
            linear = self.linears.get(name)
            if linear is None or linear.weight is not layer.weight:
                return False
        self._install(delta.layers.keys())
        return True

    def _install(self, names) -> None:
        """Make the Linears at `names` `RowLinear`s (those not yet)."""
        for name in set(names) - self.installed:
            parent, _, attribute = name.rpartition(".")
            holder = self.model.get_submodule(parent)
            linear = self.linears[name]
            packed = prepack.pack(linear.weight) if self.pack else None
            row = RowLinear(linear, name, self.plan, packed, head=linear is self.head)
            setattr(holder, attribute, row)
            self.installed.add(name)

    def use(self, rows: list[RowDelta | None]) -> None:
        """The deltas of the next forward's rows, in row order."""
        key = tuple(-1 if row is None else row.serial for row in rows)
        if key != self.plan.key:
            self.plan.rows, self.plan.key, self.plan.scalings = tuple(rows), key, {}
            self.plan.which = {}
            runs: dict[int, tuple[RowDelta, list[int]]] = {}
            for index, row in enumerate(rows):
                if row is not None:
                    runs.setdefault(row.serial, (row, []))[1].append(index)
            device = self.plan.device
            self.plan.runs = [(delta, _rows(indices, device)) for delta, indices in runs.values()]
