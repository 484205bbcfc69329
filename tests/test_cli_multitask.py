"""`tunelab train` on a multi-task config: the mixture is printed before training, each task's
before/after and the forgetting probes after; a bad template is one line, exit status 2."""

from __future__ import annotations

import re

import yaml
from typer.testing import CliRunner

from tunelab.cli import app

runner = CliRunner()


def write_config(path, templates=None):
    qa = {"name": "sums", "train": "builtin:add", "eval": "builtin:add", "kind": "qa",
          "fields": {"question": "prompt", "answer": "response"}}  # fmt: skip
    if templates is not None:
        qa["templates"] = templates
    config = {
        "model": {"name": "random:llama"},
        "data": {
            "builtin_size": 24,
            "max_eval_examples": 3,
            "max_length": 64,
            "tasks": [
                qa,
                {
                    "name": "sorting",
                    "train": "builtin:sort",
                    "held_out": True,
                    "eval": "builtin:sort",
                },
            ],
        },  # fmt: skip
        "method": {"name": "lora"},
        "train": {"max_steps": 1, "batch_size": 4},
        "eval": {"metrics": ["loss"], "max_new_tokens": 2},
        "output_dir": str(path.parent / "run"),
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_prints_mixture_tasks_and_forgetting(tmp_path):
    result = runner.invoke(app, ["train", str(write_config(tmp_path / "c.yaml"))])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.index("examples") < out.index("tasks (held_out")  # the mixture comes first
    assert re.search(r"sorting +│ held_out +│ loss", out)
    assert "forgetting · english_perplexity" in out


def test_bad_template_is_one_line_exit_2(tmp_path):
    config = write_config(tmp_path / "c.yaml", templates=["Compute {question} then {sum}"])
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "uses field 'sum'" in result.output
    assert "template 0" in result.output and not (tmp_path / "run").exists()
