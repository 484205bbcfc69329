"""From a search space to trial configs: check every key against the run config up front,
sample a point with an Optuna trial, and write that point into a copy of the base config.

Conditional spaces: `space` applies to every trial; `per_method[NAME]` applies only when the
trial's `method.name` is NAME, and its Optuna parameter is named `NAME/key` (so `lora/method.r`
and `dora/method.r` are separate dimensions). A per-method range replaces a `space` range for
the same key. The base config's `method:` keys apply to trials of that method only: a trial of
another method starts from that method's defaults plus its `per_method` ranges (pin a value
with a one-value choice, e.g. `method.r: {choice: [8]}`).
"""

from __future__ import annotations

import copy
from typing import Any

from tunelab.errors import ConfigError
from tunelab.run_config import RunConfig, load_config
from tunelab.search.space import Param, SearchSettings


def settings_of(cfg: RunConfig) -> SearchSettings:
    if cfg.search is None:
        raise ConfigError("search: the config has no search section (see examples/*-search.yaml)")
    return cfg.search


def candidate_methods(cfg: RunConfig) -> list[str]:
    """Every method a trial may use: the `method.name` choices, else the base method."""
    choice = settings_of(cfg).space.get("method.name")
    return [str(v) for v in choice.values] if choice else [cfg.method.name]


def ranges_for(settings: SearchSettings, method: str) -> dict[str, tuple[str, Param]]:
    """key -> (Optuna parameter name, range) for a trial that uses `method`."""
    ranges = {k: (k, p) for k, p in settings.space.items() if k != "method.name"}
    for key, param in settings.per_method.get(method, {}).items():
        ranges[key] = (f"{method}/{key}", param)
    return ranges


def suggest(trial, cfg: RunConfig) -> dict[str, Any]:
    """Sample one point: {dotted key: value}, `method.name` first when it is searched."""
    settings = settings_of(cfg)
    values: dict[str, Any] = {}
    method = cfg.method.name
    if "method.name" in settings.space:
        method = _suggest(trial, "method.name", settings.space["method.name"])
        values["method.name"] = method
    for key, (name, param) in ranges_for(settings, method).items():
        values[key] = _suggest(trial, name, param)
    return values


def _suggest(trial, name: str, param: Param) -> Any:
    if param.kind == "choice":
        return trial.suggest_categorical(name, param.values)
    if param.kind == "int":
        step = int(param.step or 1)
        return trial.suggest_int(name, int(param.low), int(param.high), step=step, log=param.log)
    log = param.kind == "loguniform"
    return trial.suggest_float(name, param.low, param.high, step=param.step, log=log)


def trial_config(cfg: RunConfig, values: dict[str, Any], output_dir: str) -> dict[str, Any]:
    """The base config (without `search`) with `values` written in, as a plain dict."""
    raw = copy.deepcopy(cfg.to_dict())
    raw.pop("search", None)
    raw["output_dir"] = output_dir
    method = values.get("method.name", cfg.method.name)
    if method != cfg.method.name:  # another method starts from its own defaults
        raw["method"] = {"name": method}
    for key, value in values.items():
        section, field = key.split(".")
        raw.setdefault(section, {})[field] = value
    return raw


def check_space(cfg: RunConfig) -> None:
    """Fail early, naming the key, when a range names an unknown key or reaches a bad value."""
    from tunelab.methods import METHODS

    settings = settings_of(cfg)
    methods = candidate_methods(cfg)
    for name in methods:
        if name not in METHODS:
            raise ConfigError(f"search.space.method.name: unknown method {name!r}")
    for name in settings.per_method:
        if name not in methods:
            raise ConfigError(
                f"search.per_method.{name}: method {name} is never tried "
                f"(method.name is {cfg.method.name}; list it in space.method.name choice)"
            )
    _check_objectives(cfg, settings)
    for method in methods:
        _check_value(cfg, method, "method.name", method, "search.space")
        conditional = settings.per_method.get(method, {})
        for key, (_, param) in ranges_for(settings, method).items():
            where = f"search.per_method.{method}" if key in conditional else "search.space"
            _check_key(key, method, where)
            for value in param.endpoints():
                _check_value(cfg, method, key, value, where)


def _check_objectives(cfg: RunConfig, settings: SearchSettings) -> None:
    from tunelab.evaluate.metrics import METRICS

    for index, objective in enumerate(settings.objective):
        if objective.metric in METRICS and objective.metric not in cfg.eval.metrics:
            raise ConfigError(
                f"search.objective.{index}.metric: {objective.metric} is not in eval.metrics "
                f"({', '.join(cfg.eval.metrics)}); add it there so every trial measures it"
            )


def _check_key(key: str, method: str, where: str) -> None:
    from tunelab.methods import get_method

    section, field = key.split(".")
    if section == "method":
        if field not in get_method(method).Config.model_fields:
            raise ConfigError(
                f"{where}.{key}: method {method} has no setting {field!r}"
                " (put method-specific keys under search.per_method.<method>)"
            )
        return
    model = RunConfig.model_fields.get(section)
    sub = getattr(model, "annotation", None) if model else None
    if not isinstance(sub, type) or field not in getattr(sub, "model_fields", {}):
        raise ConfigError(f"{where}.{key}: unknown config key")


def _check_value(cfg: RunConfig, method: str, key: str, value: Any, where: str) -> None:
    values = {"method.name": method, key: value}
    try:
        load_config(trial_config(cfg, values, cfg.output_dir))
    except ConfigError as err:
        raise ConfigError(f"{where}.{key}: value {value!r} is not valid ({err})") from None
