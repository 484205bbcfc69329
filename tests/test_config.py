"""Config validation: unknown keys and wrong types are errors that name the key."""

from __future__ import annotations

import pytest

from tunelab.errors import ConfigError
from tunelab.run_config import dump_config, load_config


def test_defaults_validate():
    cfg = load_config({})
    assert cfg.model.name == "embedded:smollm2-135m"
    assert cfg.method.name == "lora" and cfg.method.r == 8


def test_overrides_are_typed():
    overrides = ["method.r=16", "train.lr=1e-4", "data.packing=false", "eval.metrics=[bleu]"]
    cfg = load_config({}, overrides)
    assert cfg.method.r == 16
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.data.packing is False
    assert cfg.eval.metrics == ["bleu"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train": {"lrr": 1}}, "train.lrr: unknown key"),
        ({"bogus": {}}, "bogus: unknown key"),
        ({"train": {"max_steps": "many"}}, "train.max_steps"),
        ({"train": {"max_steps": -3}}, "train.max_steps"),
        ({"method": {"name": "lora", "rank": 4}}, "method.rank: unknown key"),
        ({"method": {"name": "nope"}}, "method.name: unknown method 'nope'"),
        ({"eval": {"metrics": ["chrf+++"]}}, "eval.metrics"),
        ({"data": {"format": "xml"}}, "data.format"),
    ],
)
def test_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        load_config(raw)


def test_yaml_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  name: x\n train: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(path)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config({"method": {"name": "lora", "r": 4}, "train": {"lr": 0.01}})
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg
    assert again.method.r == 4
