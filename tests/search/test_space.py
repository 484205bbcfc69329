"""The `search:` section: parsing, errors that name the key, conditional spaces per method."""

from __future__ import annotations

import optuna
import pytest
import yaml

from tunelab.errors import ConfigError
from tunelab.run_config import dump_config, load_config
from tunelab.search.apply import check_space, suggest, trial_config
from tunelab.search.space import SearchSettings

from .conftest import tiny_config


def _load(**search):
    return load_config(tiny_config("runs/x", **search))


def test_compact_ranges_parse_and_round_trip():
    space = {
        "train.lr": {"loguniform": [1e-5, 1e-2]},
        "train.warmup_ratio": {"uniform": [0.0, 0.2], "step": 0.05},
        "method.r": {"int": [2, 16], "log": True},
        "method.target_modules": {"choice": ["all", "attention"]},
    }
    cfg = _load(space=space)
    assert cfg.search.space["method.r"].kind == "int"
    assert cfg.search.objective[0].direction == "minimize"
    again = load_config(yaml.safe_load(dump_config(cfg)))  # YAML out and back in
    assert again.search == cfg.search
    check_space(cfg)


def test_objective_direction_defaults_to_the_metric():
    settings = SearchSettings.model_validate(
        {
            "objective": [{"metric": "chrf++"}, {"metric": "trainable_params"}],
            "space": {"train.lr": {"uniform": [0.1, 0.2]}},
        }  # fmt: skip
    )
    assert [o.direction for o in settings.objective] == ["maximize", "minimize"]
    assert settings.multi_objective


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"space": {"train.lr": {"loguniform": [0, 1e-3]}}}, "search.space.train.lr: loguniform"),
        ({"space": {"train.lr": {"uniform": [2, 1]}}}, "search.space.train.lr: uniform: low"),
        ({"space": {"train.lr": {"normal": [1, 2]}}}, "search.space.train.lr: give exactly one"),
        ({"space": {"method.r": {"int": [1.5, 4]}}}, "search.space.method.r: int"),
        ({"space": {"method.r": {"choice": []}}}, "search.space.method.r: choice"),
        ({"space": {"lr": {"choice": [1]}}}, "lr: expected a dotted config key"),
        ({"objective": {"metric": "chrf+++"}}, "search.objective.0: unknown metric"),
        ({"pruner": {"name": "sometimes"}}, "search.pruner.name"),
    ],
)
def test_schema_errors_name_the_key(search, message):
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        _load(**search)


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"space": {"train.lrr": {"choice": [1]}}}, "search.space.train.lrr: unknown config key"),
        ({"space": {"method.rank": {"choice": [1]}}}, "search.space.method.rank: method lora has"),
        ({"space": {"method.r": {"int": [0, 4]}}}, "search.space.method.r: value 0 is not valid"),
        ({"objective": {"metric": "chrf"}}, "search.objective.0.metric: chrf is not in eval"),
        (
            {"space": {"method.name": {"choice": ["lora", "ia3"]}, "method.r": {"int": [1, 4]}}},
            "search.space.method.r: method ia3 has no setting 'r'",
        ),
        ({"per_method": {"ia3": {"train.lr": {"choice": [1e-3]}}}}, "search.per_method.ia3:"),
        (
            {
                "space": {"method.name": {"choice": ["lora", "ia3"]}},
                "per_method": {"ia3": {"method.r": {"int": [1, 4]}}},
            },  # fmt: skip
            "search.per_method.ia3.method.r: method ia3 has no setting",
        ),
        ({"space": {"method.name": {"choice": ["lora", "nope"]}}}, "unknown method 'nope'"),
    ],
)
def test_key_errors_name_the_key(search, message):
    with pytest.raises(ConfigError, match=message):
        check_space(_load(**search))


def test_config_without_search_section_is_an_error():
    raw = tiny_config("runs/x")
    raw.pop("search")
    with pytest.raises(ConfigError, match="no search section"):
        check_space(load_config(raw))


CONDITIONAL = {
    "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}, "method.name": {"choice": ["lora", "ia3"]}},
    "per_method": {"lora": {"method.r": {"int": [1, 8]}}, "ia3": {"train.lr": {"choice": [0.003]}}},
}


def test_conditional_space_follows_the_method():
    cfg = _load(**CONDITIONAL)
    check_space(cfg)
    lora = suggest(
        optuna.trial.FixedTrial({"method.name": "lora", "train.lr": 1e-3, "lora/method.r": 4}), cfg
    )
    assert lora == {"method.name": "lora", "train.lr": 1e-3, "method.r": 4}
    ia3 = suggest(optuna.trial.FixedTrial({"method.name": "ia3", "ia3/train.lr": 0.003}), cfg)
    assert ia3 == {"method.name": "ia3", "train.lr": 0.003}  # per-method range replaced space


def test_trial_config_switching_method_starts_from_its_defaults():
    cfg = _load(**CONDITIONAL)
    raw = trial_config(cfg, {"method.name": "ia3", "train.lr": 0.003}, "runs/x/trials/trial-0001")
    assert raw["method"] == {"name": "ia3"}  # the base lora r=2 does not leak into ia3
    assert "search" not in raw and raw["output_dir"] == "runs/x/trials/trial-0001"
    same = load_config(trial_config(cfg, {"method.r": 6}, "runs/y"))
    assert (same.method.name, same.method.r, same.train.lr) == ("lora", 6, None)
