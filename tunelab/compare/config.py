"""The comparison config: one shared run config (`base`), the methods to run, the budget they
share, and per-method overrides. Everything is validated up front, so a typo fails before
the first method spends any time; every error names the key.

```yaml
base:                      # a run config without `method`, `train.lr` or `output_dir`
  model: {name: embedded:smollm2-135m}
  data: {train: builtin:json, eval: builtin:json}
  eval: {metrics: [loss, perplexity, exact_match]}
methods: [lora, prompt, adapter, bitfit]      # or: all
budget_steps: 60           # equal optimizer steps for every method ...
budget_seconds: null       # ... and/or equal wall time (training only, not evaluation)
overrides:                 # dotted run-config keys, per method
  lora: {method.r: 16, train.lr: 1.0e-3}
quality: exact_match       # the metric the charts and the Pareto fronts use
output_dir: runs/compare
```
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunelab.config import RunConfig, load_config
from tunelab.errors import ConfigError

TIME_ONLY_STEP_CAP = 1_000_000  # with only a time budget, steps are capped by time, not count
FORBIDDEN_BASE_KEYS = {
    "method": "the methods come from `methods:`; per-method settings go under `overrides`",
    "output_dir": "set `output_dir` at the top level; each method writes OUTPUT/runs/<method>",
}
FORBIDDEN_OVERRIDES = {"output_dir", "method.name"}


class CompareConfig(BaseModel):
    """What `tunelab compare` runs. Field descriptions double as the format's documentation."""

    model_config = ConfigDict(extra="forbid")

    base: dict[str, Any] = Field(
        default_factory=dict, description="run config shared by every method (no method section)"
    )
    methods: list[str] | Literal["all"] = Field("all", description="method names, or all")
    budget_steps: int | None = Field(None, gt=0, description="optimizer steps per method")
    budget_seconds: float | None = Field(None, gt=0, description="training seconds per method")
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per method: {dotted.run.config.key: value}"
    )
    quality: str | None = Field(
        None, description="metric for charts and Pareto fronts (default: first generative one)"
    )
    inference_tokens: int = Field(32, gt=0, description="tokens generated per timing prompt")
    output_dir: str = "runs/compare"

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: list[str] | str) -> list[str] | str:
        from tunelab.methods import METHODS

        if value == "all":
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
        from tunelab.methods import METHODS

        for name, keys in value.items():
            if name not in METHODS:
                raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
            fixed = FORBIDDEN_OVERRIDES.intersection(keys)
            if fixed:
                raise ValueError(f"{name}.{fixed.pop()} is set by the comparison itself")
        return value

    def method_names(self) -> list[str]:
        from tunelab.methods import METHODS

        return list(METHODS) if self.methods == "all" else list(self.methods)

    def run_dir(self, name: str) -> Path:
        return Path(self.output_dir) / "runs" / name


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
    try:
        cfg = CompareConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"{label}: {key}: {message}") from None
    _check_base(cfg, label)
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
    for key, why in FORBIDDEN_BASE_KEYS.items():
        if key in cfg.base:
            raise ConfigError(f"{label}: base.{key}: {why}")
    if (cfg.base.get("train") or {}).get("lr") is not None:
        raise ConfigError(
            f"{label}: base.train.lr: each method trains at its own default lr; "
            "set one per method under overrides.<method>: {train.lr: ...}"
        )


def run_configs(cfg: CompareConfig, label: str = "config") -> dict[str, RunConfig]:
    """{method: its validated RunConfig}: base + budget + the method's overrides.

    A time-only budget uses a constant learning rate: a decaying schedule needs a known length.
    """
    configs = {}
    for name in cfg.method_names():
        raw = copy.deepcopy(cfg.base)
        raw["method"] = {"name": name}
        raw["output_dir"] = str(cfg.run_dir(name))
        train = raw.setdefault("train", {})
        train["progress"] = False
        if cfg.budget_steps is not None:
            train["max_steps"] = cfg.budget_steps
        elif cfg.budget_seconds is not None:
            train["max_steps"] = train.get("max_steps") or TIME_ONLY_STEP_CAP
            train["schedule"] = "constant"
        for key, value in cfg.overrides.get(name, {}).items():
            set_dotted(raw, key, value, label=f"overrides.{name}.{key}")
        try:
            configs[name] = load_config(raw)
        except ConfigError as err:
            raise ConfigError(
                f"{label}: method {name}: {str(err).removeprefix('config: ')}"
            ) from None
    quality_metric(cfg, next(iter(configs.values())), label)
    return configs


def set_dotted(raw: dict[str, Any], key: str, value: Any, *, label: str) -> None:
    """raw[a][b][c] = value for key "a.b.c", creating sections on the way."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{label}: {part} is not a section")
    node[parts[-1]] = copy.deepcopy(value)


def quality_metric(cfg: CompareConfig, run: RunConfig, label: str = "config") -> str:
    """The metric charts rank by: `quality`, else the first generative one, else loss."""
    from tunelab.evaluate.metrics import METRICS

    metrics = run.eval.metrics
    if cfg.quality is not None:
        if cfg.quality not in metrics:
            raise ConfigError(f"{label}: quality: {cfg.quality!r} is not in base.eval.metrics")
        return cfg.quality
    generative = [name for name in metrics if METRICS[name].generative]
    if generative:
        return generative[0]
    if "loss" not in metrics:
        raise ConfigError(f"{label}: quality: name one of base.eval.metrics")
    return "loss"
