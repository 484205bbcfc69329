"""`tunelab search`: the command resumes a finished study without new trials, prints the best
trial and the files; a config without `search:` is a one-line error; the examples validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.run_config import load_config
from tunelab.search.apply import check_space

from .conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def test_search_without_search_section_is_a_one_line_error(tmp_path):
    raw = tiny_config(tmp_path / "out")
    raw.pop("search")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["search", str(path), "--trials", "1"])
    assert result.exit_code == 2
    assert "no search section" in result.output


def test_search_command_runs_and_resumes(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path / "out")))
    first = CliRunner().invoke(app, ["search", str(path), "--trials", "1"])
    assert first.exit_code == 0, first.output
    assert "1 finished trials" in first.output and "best.yaml" in first.output
    again = CliRunner().invoke(app, ["search", str(path), "--trials", "1"])  # target met
    assert again.exit_code == 0 and "1 finished trials" in again.output


@pytest.mark.parametrize("name", ["xhosa-search", "demo-search"])
def test_search_examples_validate(name):
    cfg = load_config(ROOT / "examples" / f"{name}.yaml")
    check_space(cfg)
    assert cfg.search.trials <= 12  # bounded for a CPU


def test_documented_postgresql_url_names_the_installed_driver(monkeypatch):
    """`postgresql://` works as documented: psycopg (tunelab[postgres]) when psycopg2 is absent."""
    import importlib.util

    from tunelab.search.study import sqlalchemy_url

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "psycopg2" else real(name)
    )
    assert sqlalchemy_url("postgresql://u@h:5/db") == "postgresql+psycopg://u@h:5/db"
    assert sqlalchemy_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert sqlalchemy_url("sqlite:///x.db") == "sqlite:///x.db"
