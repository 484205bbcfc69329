"""The `search:` section of a run config: what to vary, what to optimise, how to sample and prune.

    search:
      trials: 30                                  # default for `tunelab search --trials`
      objective: {metric: chrf++, direction: maximize}   # or a list: a Pareto front
      space:                                      # any dotted config key -> one range
        train.lr: {loguniform: [1.0e-5, 1.0e-2]}
        train.warmup_ratio: {uniform: [0.0, 0.2]}
        method.name: {choice: [lora, ia3]}
      per_method:                                 # conditional: only when that method is tried
        lora: {method.r: {int: [4, 64], log: true}, method.alpha: {choice: [8, 16, 32]}}
      pruner: {name: median, startup_trials: 2}   # median | hyperband | none
      sampler: tpe                                # tpe | nsga2 | random (seeded by `seed`)

This module is schema only: it imports neither the config nor Optuna, so `tunelab.config` can
type its `search` field with `SearchSettings`. Checks that need the rest of the run config
(is `train.lrr` a key? does method ia3 have `r`?) live in `tunelab.search.keys`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer
from pydantic import model_validator as _model_validator
from pydantic_core import PydanticCustomError

KINDS = ("loguniform", "uniform", "int", "choice")

# Run-summary fields an objective may name besides the eval metrics, with their natural direction.
SUMMARY_FIELDS: dict[str, str] = {
    "trainable_params": "minimize",
    "trainable_percent": "minimize",
    "adapter_bytes": "minimize",
    "train_seconds": "minimize",
    "peak_memory_mb": "minimize",
    "final_train_loss": "minimize",
    "train_tokens_per_second": "maximize",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("search_config", message)


class Param(_Strict):
    """One range, written compactly: `{loguniform: [lo, hi]}`, `{uniform: [lo, hi], step: s}`,
    `{int: [lo, hi], step: s, log: true}` or `{choice: [a, b, ...]}`."""

    kind: Literal["loguniform", "uniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] = Field(default_factory=list)
    step: float | None = None
    log: bool = False

    @_model_validator(mode="before")
    @classmethod
    def _compact(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or "kind" in raw:
            return raw
        kinds = [k for k in KINDS if k in raw]
        if len(kinds) != 1:
            raise _fail(
                f"give exactly one of {', '.join(KINDS)} (e.g. {{loguniform: [1e-5, 1e-3]}})"
            )
        kind = kinds[0]
        rest = {k: v for k, v in raw.items() if k != kind}
        bounds = raw[kind]
        if kind == "choice":
            return {"kind": kind, "values": bounds, **rest}
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
            raise _fail(f"{kind}: expected [low, high]")
        return {"kind": kind, "low": bounds[0], "high": bounds[1], **rest}

    @_model_validator(mode="after")
    def _check(self) -> Param:
        if self.kind == "choice":
            self._check_choice()
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise _fail(f"{self.kind}: low must be below high")
        if self.kind == "loguniform" and self.low <= 0:
            raise _fail("loguniform: low must be above 0")
        if self.kind == "int":
            if self.low != int(self.low) or self.high != int(self.high):
                raise _fail("int: bounds must be whole numbers")
            if self.step is not None and self.step != int(self.step):
                raise _fail("int: step must be a whole number")
        if self.log and self.kind != "int":
            raise _fail("log: only for int ranges (use loguniform for floats)")
        if self.step is not None and (self.step <= 0 or self.kind == "loguniform"):
            raise _fail("step: must be above 0, and only for uniform or int ranges")
        if self.log and self.step not in (None, 1):
            raise _fail("int: log and step cannot be combined")
        return self

    def _check_choice(self) -> None:
        if not self.values:
            raise _fail("choice: give at least one value")
        if any(v is not None and not isinstance(v, (bool, int, float, str)) for v in self.values):
            raise _fail("choice: values must be strings, numbers, booleans or null")
        if self.step is not None or self.log:
            raise _fail("choice: step and log do not apply")

    def endpoints(self) -> list[Any]:
        """The values the range can reach at its edges (all of them for a choice)."""
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    @model_serializer
    def _dump(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"choice": list(self.values)}
        low, high = (int(self.low), int(self.high)) if self.kind == "int" else (self.low, self.high)
        out: dict[str, Any] = {self.kind: [low, high]}
        if self.step is not None:
            out["step"] = int(self.step) if self.kind == "int" else self.step
        if self.log:
            out["log"] = True
        return out


class Objective(_Strict):
    """A value to optimise: an eval metric (`eval.metrics`) or a run-summary field."""

    metric: str
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="default: the metric's natural direction"
    )

    @_model_validator(mode="after")
    def _resolve(self) -> Objective:
        from tunelab.evaluate.metrics import METRICS

        if self.metric in METRICS:
            natural = "maximize" if METRICS[self.metric].higher_is_better else "minimize"
        elif self.metric in SUMMARY_FIELDS:
            natural = SUMMARY_FIELDS[self.metric]
        else:
            known = ", ".join([*sorted(METRICS), *SUMMARY_FIELDS])
            raise _fail(f"unknown metric {self.metric!r}; known: {known}")
        if self.direction is None:
            self.direction = natural
        return self


class PrunerSettings(_Strict):
    """Stop unpromising trials early from the eval loss logged every `train.eval_every` steps."""

    name: Literal["median", "hyperband", "none"] = "median"
    startup_trials: int = Field(2, ge=0, description="median: trials that are never pruned")
    warmup_steps: int = Field(0, ge=0, description="median: steps before pruning is considered")
    min_resource: int = Field(1, gt=0, description="hyperband: fewest steps a trial gets")
    reduction_factor: int = Field(3, ge=2, description="hyperband: keep 1/factor per rung")

    @_model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        return {"name": raw} if isinstance(raw, str) else raw


class SearchSettings(_Strict):
    """The validated `search:` section (structure and ranges; keys are checked at search time)."""

    objective: list[Objective] = Field(description="one objective, or a list for a Pareto front")
    space: dict[str, Param] = Field(default_factory=dict, description="dotted key -> range")
    per_method: dict[str, dict[str, Param]] = Field(
        default_factory=dict, description="method name -> extra ranges used only for it"
    )
    trials: int = Field(20, gt=0, description="default for --trials")
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    seed: int = 0
    startup_trials: int = Field(10, ge=1, description="TPE random start; NSGA-II population")
    pruner: PrunerSettings = Field(default_factory=PrunerSettings)
    storage: str | None = Field(None, description="database URL; default OUTPUT/study.db")
    study_name: str | None = Field(None, description="default: the output directory's name")

    @field_validator("objective", mode="before")
    @classmethod
    def _one_or_many(cls, raw: Any) -> Any:
        return [raw] if isinstance(raw, dict) else raw

    @field_validator("objective")
    @classmethod
    def _distinct(cls, value: list[Objective]) -> list[Objective]:
        if not value:
            raise _fail("give at least one objective")
        names = [o.metric for o in value]
        if len(set(names)) != len(names):
            raise _fail("an objective is listed twice")
        return value

    @_model_validator(mode="after")
    def _check_keys(self) -> SearchSettings:
        for key in [*self.space, *(k for ranges in self.per_method.values() for k in ranges)]:
            check_key_shape(key)
        for name, ranges in self.per_method.items():
            if "method.name" in ranges:
                raise _fail(f"per_method.{name}: method.name belongs in space, not per_method")
        if not self.space and not any(self.per_method.values()):
            raise _fail("space: give at least one key to search")
        return self

    @property
    def multi_objective(self) -> bool:
        return len(self.objective) > 1


def check_key_shape(key: str) -> None:
    """A searchable key is `section.field` (no `search.*`, no `output_dir`)."""
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise _fail(f"{key}: expected a dotted config key like train.lr or method.r")
    if parts[0] == "search":
        raise _fail(f"{key}: the search section itself cannot be searched")
