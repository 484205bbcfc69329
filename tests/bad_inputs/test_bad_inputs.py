"""Every bad input of the corpus (`cases.py`) through the real CLI: exit status 2, exactly one
line on stderr that names the key, file:line or flag, no traceback, and nothing written or
changed under the case's folder (which is also the working directory and the model cache)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.bad_inputs.cases import CASES
from tests.bad_inputs.corpus import snapshot
from tunelab.cli import app

ROOT = Path(__file__).resolve().parents[2]


def test_the_corpus_is_large_and_covers_every_command():
    assert len(CASES) >= 40
    names = " ".join(CASES)
    for word in ("train", "eval", "generate", "merge", "search", "compare", "json", "csv",
                 "tsv", "txt", "gguf", "model", "target_modules"):  # fmt: skip
        assert word in names, word


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path, finished_runs,
                                                         monkeypatch):  # fmt: skip
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    argv, expected = CASES[name](case_dir, finished_runs)
    monkeypatch.chdir(case_dir)  # relative defaults (runs/run) would land here
    monkeypatch.setenv("TUNELAB_CACHE", str(case_dir / "cache"))
    before = snapshot(case_dir)
    result = CliRunner().invoke(app, argv)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert snapshot(case_dir) == before


def test_real_process_stderr_is_one_line(tmp_path, finished_runs):
    """In a real process nothing else reaches stderr either (library warnings, logging): the
    case that gets furthest (model loaded, PEFT imported) before its error."""
    argv, expected = CASES["target_modules_typo"](tmp_path, finished_runs)
    assert expected in rejected_in_a_process(argv, tmp_path)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "config.yaml", "--no-such-flag"], "No such option: --no-such-flag"),
        (["serve", "--fold-wait-steps", "-1"], "Invalid value for '--fold-wait-steps'"),
        (["serve", "--max-batch", "x"], "Invalid value for '--max-batch'"),
        (["train"], "Missing argument 'config'"),
        (["trian"], "No such command 'trian'"),
    ],
)
def test_bad_flags_and_commands_are_one_line_exit_2(argv, expected, tmp_path):
    """What the CLI's parser rejects (unknown flags and commands, values of the wrong type or
    range, missing arguments) is one line on stderr and exit 2 in a real process too, not
    Typer's box of usage and error."""
    line = rejected_in_a_process(argv, tmp_path)
    assert line.startswith("error: ") and expected in line, line


def rejected_in_a_process(argv: list[str], folder: Path) -> str:
    """`python -m tunelab.cli ARGV` run in `folder`: exit 2, one line on stderr (returned),
    nothing written or changed under `folder`."""
    before = snapshot(folder)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNELAB_CACHE": str(folder / "cache")}
    done = subprocess.run([sys.executable, "-m", "tunelab.cli", *argv], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert snapshot(folder) == before
    return done.stderr.strip()
