"""The whole run configuration: model, data, method, train, eval, output_dir.

A run is fully described by one `RunConfig`. YAML in, YAML out; dotted overrides
(`method.r=16 train.lr=1e-4`) are applied before validation so every error names the key.
`method:` is resolved to the named method's own settings class (`tunelab.methods`), which is
why this module sits above both the sections (`tunelab.config`) and the methods.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SerializeAsAny, ValidationError, field_validator, model_validator

from tunelab.config import (
    REMOVED_COMPILE,
    DataConfig,
    EvalConfig,
    MethodSettings,
    ModelConfig,
    Section,
    TrainConfig,
)
from tunelab.errors import ConfigError
from tunelab.methods import resolve_method_config
from tunelab.search.space import SearchSettings


def _method_settings(raw: dict[str, Any]) -> MethodSettings:
    return resolve_method_config(raw)


class RunConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: SerializeAsAny[MethodSettings] = Field(
        default_factory=lambda: _method_settings({"name": "lora"}),
        description="`name` picks the method; the other keys are that method's settings",
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output_dir: str = "runs/run"
    search: SearchSettings | None = Field(None, description="`tunelab search` space")

    @model_validator(mode="before")
    @classmethod
    def _base_of_init_from(cls, data: Any) -> Any:
        """`model.name` (and `seed`) left out beside `model.init_from`: that run's base."""
        model = data.get("model") if isinstance(data, dict) else None
        if isinstance(model, dict) and model.get("init_from") and "name" not in model:
            data = {**data, "model": {**model, **base_of(str(model["init_from"]), keep=model)}}
        return data

    @field_validator("method", mode="before")
    @classmethod
    def _validate_method(cls, value: Any) -> MethodSettings:
        if isinstance(value, MethodSettings):
            return value
        if not isinstance(value, dict):
            raise ValueError("expected a mapping with at least `name`")
        return _method_settings(value)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


def base_of(run: str, keep: dict[str, Any]) -> dict[str, Any]:
    """`name` (and `seed`, unless `keep` has it) of RUN's base, for a config that left them
    out; reads RUN/config.yaml only."""
    config = Path(run).expanduser() / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"model.init_from: {run}: not a run directory (no config.yaml)")
    model = load_config(config).model
    return {"name": model.name} | ({} if "seed" in keep else {"seed": model.seed})


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    if message == REMOVED_COMPILE:
        key = f"{key}.compile"
    return f"{source}: {key}: {message}"


def parse_value(text: str) -> Any:
    """Parse an override value the way YAML would (`1e-4` -> float, `true` -> bool); text that
    is not valid YAML stays a string (validation then names the key if it must be more)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a nested dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE (e.g. train.lr=1e-4)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
            node = child
        node[parts[-1]] = parse_value(text)
    return raw


def load_config(
    source: str | os.PathLike | dict[str, Any] | RunConfig, overrides: list[str] | None = None
) -> RunConfig:
    """Read and validate a run config from a YAML path, a dict or a RunConfig."""
    if isinstance(source, RunConfig):
        if not overrides:
            return source
        source = source.to_dict()
    label = "config"
    if isinstance(source, dict):
        raw = yaml.safe_load(yaml.safe_dump(source))  # deep copy of plain data
    else:
        path = Path(source)
        label = str(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{where}: not valid YAML ({exc.__class__.__name__})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    apply_overrides(raw, overrides or [])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, label)) from None


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)
