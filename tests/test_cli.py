"""The `tunelab` command: user errors are one line with exit status 2; the happy path
trains, evaluates and generates from a run."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from tunelab.cli import app

runner = CliRunner()


def write_config(path, **changes):
    config = {
        "model": {"name": "random:llama"},
        "data": {
            "train": "builtin:add",
            "eval": "builtin:add",
            "builtin_size": 32,
            "max_eval_examples": 4,
        },  # fmt: skip
        "method": {"name": "lora"},
        "train": {"max_steps": 2, "batch_size": 4, "progress": False},
        "eval": {"metrics": ["loss", "exact_match"], "max_new_tokens": 4, "before": False},
        "output_dir": str(path.parent / "run"),
    }
    for section, values in changes.items():
        config[section] = {**config[section], **values}
    path.write_text(yaml.safe_dump(config))
    return path


def test_unknown_key_is_one_line_exit_2(tmp_path):
    config = write_config(tmp_path / "c.yaml", train={"learning_rate": 1})
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert "train.learning_rate: unknown key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_malformed_data_names_file_and_line_and_writes_nothing(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "1", "response": "2"}\n\n{"prompt": "3", "response": 4\n')
    config = write_config(tmp_path / "c.yaml", data={"train": str(data), "eval": None})
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert "rows.jsonl:3" in result.stderr
    assert not (tmp_path / "run").exists()


def test_missing_field_is_reported(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"inputs": "a", "targets": "b"}\n{"inputs": "c"}\n')
    config = write_config(
        tmp_path / "c.yaml",
        data={
            "train": str(data),
            "eval": None,
            "prompt_field": "inputs",
            "response_field": "targets",
        },  # fmt: skip
    )
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert "rows.jsonl:2" in result.stderr and "targets" in result.stderr


def test_train_with_overrides_then_eval_and_generate(tmp_path):
    config = write_config(tmp_path / "c.yaml")
    result = runner.invoke(app, ["train", str(config), "method.r=4", "train.lr=1e-3"])
    assert result.exit_code == 0, result.output
    shares = [line for line in result.output.splitlines() if line.startswith("wall ")]
    assert len(shares) == 1 and " steps " in shares[0] and shares[0].endswith("%"), result.output
    run = tmp_path / "run"
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["method"]["r"] == 4 and resolved["train"]["lr"] == 1e-3

    result = runner.invoke(app, ["eval", str(run), "--metrics", "loss,chrf"])
    assert result.exit_code == 0, result.output
    scores = json.loads((run / "eval.json").read_text())
    assert {"loss", "chrf"} <= set(scores)

    result = runner.invoke(app, ["generate", str(run), "--prompt", "What is 2 + 2?",
                                 "--max-new-tokens", "3"])  # fmt: skip
    assert result.exit_code == 0, result.output


def test_eval_of_a_missing_run_is_a_user_error(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "not a run directory" in result.stderr


def test_models_lists_the_embedded_models_and_the_gemma_terms(monkeypatch):
    from tunelab.models.load import EMBEDDED

    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "embedded:smollm2-135m" in result.stdout and "random:<arch>" in result.stdout
    assert "embedded:gemma3-270m" in result.stdout
    assert "https://ai.google.dev/gemma/terms" in result.stdout
    monkeypatch.setattr(type(EMBEDDED["gemma3-270m"]), "installed", lambda entry: False)
    result = runner.invoke(app, ["models"])
    assert "not installed: pip install 'tunelab[gemma]'" in result.stdout
