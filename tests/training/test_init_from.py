"""`model.init_from: RUN`: a run that starts from an earlier run's merged weights.

One LoRA run (the "stage 1"), then an IA³ run from it (any method may follow): the second run's
untrained model is the first run's model, its saved run rebuilds the chain, its merge loads with
plain transformers, and a changed or moved stage 1 is a one-line error, never another base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from tunelab import train
from tunelab.cli import app
from tunelab.errors import ModelError
from tunelab.export.merge import merge_run
from tunelab.models import load_model_and_tokenizer
from tunelab.run import content_hash, load_run, read_run_config
from tunelab.serve.server import plan_runs

TEXTS = ["hello world, chained", "abc"]


def config(output: Path, method: str, **model) -> dict:
    return {
        "model": model or {"name": "random:llama"},
        "data": {"train": "builtin:reverse", "builtin_size": 16, "max_length": 32,
                 "max_eval_examples": 4},
        "method": {"name": method},
        "train": {"max_steps": 3, "lr": 3e-2, "batch_size": 4, "tokens_per_batch": 128,
                  "progress": False},
        "eval": {"before": True, "metrics": ["loss"], "forgetting": False},
        "output_dir": str(output),
    }  # fmt: skip


def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(TEXTS, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("chain")
    first = train(config(root / "stage1", "lora")).run_dir
    second = train(config(root / "stage2", "ia3", init_from=str(first))).run_dir
    return first, second


def test_second_stage_starts_from_the_first_stages_model(chain):
    first, second = chain
    before = json.loads((second / "before.json").read_text())
    after_first = json.loads((first / "summary.json").read_text())["after"]
    plain_before = json.loads((first / "before.json").read_text())
    assert before["loss"] == pytest.approx(after_first["loss"], abs=1e-5)  # same eval rows
    assert abs(before["loss"] - plain_before["loss"]) > 1e-3  # and not the plain base
    cfg = read_run_config(second)
    assert cfg.model.name == "random:llama"  # taken from the first run
    assert cfg.model.init_from == str(first.resolve())
    assert cfg.model.init_from_hash == content_hash(first)
    summary = json.loads((second / "summary.json").read_text())
    assert summary["init_from"]["content_hash"] == content_hash(first)
    assert summary["init_from"]["method"] == "lora"
    stage1, tokenizer = load_run(first)
    start, _ = load_model_and_tokenizer(cfg.model)
    assert torch.allclose(logits(start, tokenizer), logits(stage1, tokenizer), atol=1e-5)


def test_load_run_rebuilds_the_chain_and_merge_loads_plainly(chain, tmp_path):
    first, second = chain
    model, tokenizer = load_run(second)
    chained = logits(model, tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(merge_run(second, tmp_path / "m"))
    assert torch.allclose(logits(merged, tokenizer), chained, atol=1e-4)
    stage1, _ = load_run(first)
    assert (logits(stage1, tokenizer) - chained).abs().max() > 1e-3  # stage 2 trained


def test_a_changed_or_moved_first_stage_is_a_one_line_error(chain, tmp_path):
    first, second = chain
    copy = tmp_path / "stage2"
    shutil.copytree(second, copy)
    moved = tmp_path / "stage1"
    shutil.copytree(first, moved)
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    saved["model"]["init_from"] = str(tmp_path / "gone")
    (copy / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ModelError, match="no finished run there any more"):
        load_run(copy)
    saved["model"]["init_from"] = str(moved)
    (copy / "config.yaml").write_text(yaml.safe_dump(saved))
    load_run(copy)  # a faithful copy is fine
    (moved / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelError, match="changed since this run was trained"):
        load_run(copy)


def test_serve_skips_a_chained_run_and_refuses_it_by_name(chain):
    first, second = chain
    plan = plan_runs([first.parent], {}, None)
    assert list(plan.runs) == ["stage1"]
    assert "model.init_from" in plan.skipped[0] and "stage2" in plan.skipped[0]
    with pytest.raises(Exception, match="tunelab merge"):
        plan_runs([], {"s2": str(second)}, None)


def run_cli(tmp_path: Path, **model) -> tuple[int, str, Path]:
    output = tmp_path / "new"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(output, "lora", **model)))
    result = CliRunner().invoke(app, ["train", str(path)])
    return result.exit_code, result.stderr.strip(), output


@pytest.mark.parametrize(
    ("case", "message"),
    [("missing", "no such run directory"), ("unfinished", "not finished"),
     ("other base", "was trained on random:llama"), ("prompt", "cannot be merged")],
)  # fmt: skip
def test_bad_init_from_is_one_line_exit_2_and_writes_nothing(chain, tmp_path, case, message):
    first, _ = chain
    run = tmp_path / "run"
    model = {"name": "random:llama", "init_from": str(run)}
    if case == "unfinished":
        shutil.copytree(first, run)
        (run / "summary.json").unlink()
    elif case == "other base":
        shutil.copytree(first, run)
        model["name"] = "random:qwen2"
    elif case == "prompt":
        shutil.copytree(first, run)
        saved = yaml.safe_load((run / "config.yaml").read_text())
        saved["method"] = {"name": "prompt"}
        (run / "config.yaml").write_text(yaml.safe_dump(saved))
    code, stderr, output = run_cli(tmp_path, **model)
    assert code == 2, stderr
    assert message in stderr and len(stderr.splitlines()) == 1
    assert not output.exists()


def test_a_run_may_not_replace_its_own_starting_point(chain, tmp_path):
    first, _ = chain
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(first, "lora", init_from=str(first))))
    before = content_hash(first)
    result = CliRunner().invoke(app, ["train", str(path), "--overwrite"])
    assert result.exit_code == 2 and "its own starting point" in result.stderr
    assert content_hash(first) == before


def test_eval_and_generate_work_on_a_chained_run(chain, tmp_path):
    _, second = chain
    run = tmp_path / "stage2"
    shutil.copytree(second, run)
    result = CliRunner().invoke(app, ["eval", str(run), "--metrics", "loss"])
    assert result.exit_code == 0, result.output
    scores = json.loads((run / "eval.json").read_text())
    saved = json.loads((run / "summary.json").read_text())["after"]["loss"]
    assert scores["loss"] == pytest.approx(saved, abs=1e-4)  # the chain, rebuilt, scores alike
    result = CliRunner().invoke(app, ["generate", str(run), "-p", "abc", "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output


def test_a_third_stage_starts_from_the_whole_chain(chain, tmp_path):
    _, second = chain
    third = train(config(tmp_path / "stage3", "lora", init_from=str(second))).run_dir
    before = json.loads((third / "before.json").read_text())["loss"]
    assert before == pytest.approx(
        json.loads((second / "summary.json").read_text())["after"]["loss"], abs=1e-5
    )
    summary = json.loads((third / "summary.json").read_text())
    assert len(summary["init_from"]["chain"]) == 2  # stage 2, then stage 1
