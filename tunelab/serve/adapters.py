"""Several fine-tuned runs served from one loaded base model, switched without reloading it.

Every run is applied to its own *view* of the base: a copy of the base's module tree whose
parameters and buffers are the base's own tensors (`copy.deepcopy` with the tensors in its
memo), so a view costs module objects, not weights. The run's method then loads onto that view
exactly as `load_run` loads onto a fresh base — PEFT injects its layers into the view's modules
(LoRA, DoRA, IA³) or wraps it (prompt, prefix, p-tuning); our methods inject modules (bottleneck
adapters, BitFit's added biases) or parametrisations (importance) into it. A base tensor the run
overwrites (full fine-tuning, ULMFiT, BitFit's own biases, trained norms) gets a private copy in
that view first, so the base stays untouched. Switching is choosing which view answers: no
tensor moves, and each view computes exactly what a fresh `load_run` of its run computes. A run
that extends the vocabulary (`model.extend_vocab`) brings its tokenizer and new rows into the
base itself, so it is served alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from tunelab.config import DataConfig, EvalConfig, ModelConfig
from tunelab.data.templates import render_prompt
from tunelab.errors import TunelabError
from tunelab.evaluate import generate
from tunelab.evaluate.decoding import resolve_options
from tunelab.methods import get_method
from tunelab.models import load_model_and_tokenizer
from tunelab.run import RunFiles, read_run_config
from tunelab.serve.fastlora import fuse_lora
from tunelab.training.vocab import ROWS_FILE, extension_on, load_vocab

BASE = "base"  # the name that selects the untouched base model
PEFT_PREFIX = "base_model.model."  # PEFT's saved names start here
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}  # never loaded: unpickling runs code
WRAPPED = ".base_layer"  # PEFT layers and our bottleneck adapters keep the original module here


@dataclass
class Served:
    model: nn.Module
    data: DataConfig  # how the run rendered prompts (template, system prompt)
    run_dir: Path
    decoding: dict = field(default_factory=dict)  # the run's eval decoding options
    method: str = ""  # the run's method name


class AdapterSet:
    """Named runs on one base model. `use(name)` picks which answers `generate` and `.model`;
    `use(None)` or `use("base")` picks the untouched base."""

    def __init__(self, base_model: str | ModelConfig) -> None:
        if isinstance(base_model, str):
            base_model = ModelConfig(name=base_model)
        self.model_config = base_model
        self.base, self.tokenizer = load_model_and_tokenizer(base_model)
        self.runs: dict[str, Served] = {}
        self.active: str | None = None
        self.vocabulary_of: Path | None = None  # the run whose extended vocabulary the base holds

    @classmethod
    def from_runs(cls, runs: dict[str, str | Path]) -> AdapterSet:
        """Load the base named by the first run, then add every run; the first is active."""
        if not runs:
            raise TunelabError("adapters: give at least one NAME=RUN")
        served = cls(read_run_config(next(iter(runs.values()))).model)
        for name, run_dir in runs.items():
            served.add(name, run_dir)
        return served

    @property
    def names(self) -> list[str]:
        return list(self.runs)

    @property
    def model(self) -> nn.Module:
        """The active run's model (the base when none is active), in eval mode."""
        return self.runs[self.active].model if self.active else self.base

    def add(self, name: str, run_dir: str | Path) -> None:
        """Apply the run in `run_dir` to a view of the shared base; the first added is active."""
        if name == BASE or name in self.runs:
            taken = "is reserved for the base model" if name == BASE else "is already in use"
            raise TunelabError(f"adapters: the name {name!r} {taken}")
        self.runs[name] = self.build(run_dir)
        if len(self.runs) == 1:
            self.active = name

    def build(self, run_dir: str | Path) -> Served:
        """The run in `run_dir` on a fresh view of the base, not yet named or served. Reads the
        base's tensors only, so a server may build while other views generate."""
        cfg = read_run_config(run_dir)
        if cfg.model != self.model_config:
            raise TunelabError(
                f"adapters: {run_dir} was trained on {describe(cfg.model)}, but this set serves "
                f"{describe(self.model_config)}; every run must share the base model"
            )
        method = get_method(cfg.method.name)
        adapter = RunFiles(Path(run_dir)).adapter
        if extension_on(cfg):
            self._take_vocabulary(Path(run_dir), adapter)
        pickled = sorted(p.name for p in adapter.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise TunelabError(f"adapters: {adapter} holds pickle files ({', '.join(pickled)}); "
                               "only safetensors weights are loaded")  # fmt: skip
        view = shared_view(self.base)
        if (adapter / "config.json").is_file():  # a whole transformers model (full, ULMFiT)
            model = load_full_weights(view, adapter)
        else:
            give_own_copies(view, written_names(adapter, view))
            model = method.load(view, cfg.method, adapter)
            fuse_lora(model)  # PEFT's LoRA layers: the same sums without the bookkeeping
        decoding = resolve_options(cfg.eval.decoding(), [])  # no references: auto is off
        return Served(model.eval(), cfg.data, Path(run_dir), decoding, cfg.method.name)

    def _take_vocabulary(self, run_dir: Path, adapter: Path) -> None:
        """A run with `model.extend_vocab` brings its tokenizer and trained new rows into the
        base (old rows untouched), so it is served alone: every view shares that vocabulary."""
        others = {s.run_dir.resolve() for s in self.runs.values()} - {run_dir.resolve()}
        taken = self.vocabulary_of not in (None, run_dir.resolve())
        if others or taken:
            raise TunelabError(
                f"adapters: {run_dir} extends the vocabulary (model.extend_vocab); such a run is "
                "served alone, not beside other runs on one base"
            )
        self.base, self.tokenizer = load_vocab(self.base, self.tokenizer, run_dir, adapter)
        self.vocabulary_of = run_dir.resolve()

    def put(self, name: str, served: Served) -> None:
        """Serve `served` under `name`, replacing what was there (a reload) in one step."""
        if name == BASE:
            raise TunelabError(f"adapters: the name {name!r} is reserved for the base model")
        self.runs[name] = served

    def remove(self, name: str) -> None:
        """Stop serving `name`; its view is freed once no generation holds it."""
        if name not in self.runs:
            raise TunelabError(f"adapters: no adapter named {name!r}")
        del self.runs[name]
        if self.active == name:
            self.active = None

    def decoding(self, name: str | None) -> dict:
        """Decoding options of `name` (its run's eval decoding; the base: the defaults)."""
        served = self.runs.get(name) if name else None
        return dict(served.decoding) if served else resolve_options(EvalConfig().decoding(), [])

    def use(self, name: str | None) -> None:
        """Make `name` answer from now on (None or "base": the untouched base)."""
        if name is not None and name != BASE and name not in self.runs:
            known = ", ".join([BASE, *self.runs])
            raise TunelabError(f"adapters: no adapter named {name!r}; known: {known}")
        self.active = None if name == BASE else name

    def generate(
        self, prompts: list[str], max_new_tokens: int, *, raw: bool = False, batch_size: int = 8
    ) -> list[str]:
        """Continuations from the active model; prompts go through the run's template unless
        `raw` (the base uses the default template)."""
        config = self.runs[self.active] if self.active else None
        data = config.data if config else DataConfig()
        decoding = self.decoding(self.active)
        rendered = prompts if raw else [render_prompt(p, self.tokenizer, data) for p in prompts]
        return generate(
            self.model, self.tokenizer, rendered, max_new_tokens=max_new_tokens,
            batch_size=batch_size, **decoding,
        )  # fmt: skip


def describe(model: ModelConfig) -> str:
    start = f", from run {model.init_from}" if model.init_from else ""
    return f"{model.name} ({model.dtype}, seed {model.seed}, {model.attn_implementation}{start})"


def shared_view(base: nn.Module) -> nn.Module:
    """A copy of `base`'s modules that holds the very same parameter and buffer tensors."""
    shared = {id(tensor): tensor for tensor in [*base.parameters(), *base.buffers()]}
    return copy.deepcopy(base, memo=shared)


def written_names(adapter: Path, view: nn.Module) -> set[str]:
    """Base parameter names whose values the run's load would overwrite: saved tensors named
    like a base parameter once PEFT's prefix and the wrappers' `.base_layer` are taken out."""
    saved = set()
    for path in adapter.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            saved.update(handle.keys())
    plain = {name.removeprefix(PEFT_PREFIX).replace(WRAPPED, "") for name in saved}
    return plain & {name for name, _ in view.named_parameters()}


def give_own_copies(view: nn.Module, names: set[str]) -> None:
    """Replace each named parameter of `view` by a private copy, wherever the view holds it
    (a tied embedding and head are one parameter: both get the one copy)."""
    for name in names:
        shared = view.get_parameter(name)
        own = nn.Parameter(shared.detach().clone(), requires_grad=shared.requires_grad)
        replace_parameter(view, shared, own)


def load_full_weights(view: nn.Module, adapter: Path) -> nn.Module:
    """Put a saved whole model's tensors into `view`; tensors equal to the base stay shared."""
    for path in sorted(adapter.glob("*.safetensors")):
        if path.name == ROWS_FILE:  # the new vocabulary rows: already in the base
            continue
        for name, value in load_file(str(path)).items():
            module, attribute = _holder(view, name)
            current = getattr(module, attribute, None)
            if not isinstance(current, torch.Tensor) or current.shape != value.shape:
                raise TunelabError(
                    f"adapters: {adapter} holds {name!r}, which the base model does not have "
                    "in that shape; it cannot share this base"
                )
            value = value.to(device=current.device, dtype=current.dtype)
            if torch.equal(value, current):
                continue
            if isinstance(current, nn.Parameter):
                own = nn.Parameter(value, requires_grad=current.requires_grad)
                replace_parameter(view, current, own)
            else:
                module.register_buffer(attribute, value)
    return view


def _holder(view: nn.Module, name: str) -> tuple[nn.Module | None, str]:
    """(module, attribute) of a dotted tensor name; the module is None if the path is absent."""
    module_name, _, attribute = name.rpartition(".")
    try:
        return view.get_submodule(module_name), attribute
    except AttributeError:
        return None, attribute


def replace_parameter(view: nn.Module, old: nn.Parameter, new: nn.Parameter) -> None:
    """Make every module of `view` that holds `old` hold `new` instead."""
    for module in view.modules():
        for key, parameter in module._parameters.items():
            if parameter is old:
                module._parameters[key] = new
