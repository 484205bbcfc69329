"""`tunelab eval --tune-decoding`: the grid is scored on dev prompts only (test data is never
read), the winner lands in the run's config and decoding.json, a test-named eval file is
refused."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from tunelab import train
from tunelab.cli import app
from tunelab.evaluate import evaluation
from tunelab.run import read_run_config
from tunelab.serve.tune_decoding import choose, tune_decoding

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

WORDS = ["apple", "river", "stone", "cloud", "green", "light", "table", "music", "north"]


def write_pairs(path, tag: str, count: int) -> list[str]:
    prompts = [f"{tag} {WORDS[i % 9]} {i}" for i in range(count)]
    rows = [{"prompt": p, "response": p.split()[1][::-1]} for p in prompts]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return prompts


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    write_pairs(root / "train.jsonl", "train", 16)
    dev = write_pairs(root / "dev.jsonl", "dev", 5)
    write_pairs(root / "test.jsonl", "test", 5)
    config = {
        "model": {"name": "random:llama"},
        "data": {
            "train": str(root / "train.jsonl"),
            "eval": str(root / "dev.jsonl"),
            "max_length": 64,
        },  # fmt: skip
        "method": {"name": "lora"},
        "train": {"max_steps": 2, "batch_size": 4, "progress": False},
        "eval": {
            "metrics": ["chrf++"],
            "max_new_tokens": 6,
            "before": False,
            "repetition_guard": 0,
        },  # fmt: skip
        "output_dir": str(root / "run"),
    }
    return train(config).run_dir, dev


GRID = [{"repetition_guard": 0, "stop_at_newline": False}, {"repetition_guard": 3}]


def test_tunes_on_dev_prompts_only_and_stores_the_winner(run, monkeypatch):
    run_dir, dev = run
    seen: list[str] = []
    real = evaluation.generate

    def spy(model, tokenizer, prompts, **options):
        seen.extend(prompts)
        return real(model, tokenizer, prompts, **options)

    monkeypatch.setattr(evaluation, "generate", spy)
    record = tune_decoding(run_dir, grid=GRID)
    assert len(seen) == 2 * len(dev)  # every candidate scored the whole dev split
    assert all(any(p in prompt for p in dev) for prompt in seen)
    assert not any("test" in prompt or "train" in prompt for prompt in seen)
    assert [c["settings"]["repetition_guard"] for c in record["candidates"]] == [0, 3]
    assert record["candidates"][1]["settings"]["stop_at_newline"] is True  # auto, decided
    stored = read_run_config(run_dir).eval
    for name, value in record["winner"]["settings"].items():
        assert getattr(stored, name) == value
    assert record["previous"]["repetition_guard"] == 0
    assert json.loads((run_dir / "decoding.json").read_text())["winner"] == record["winner"]


def test_choice_prefers_outputs_that_do_not_loop():
    loop = {"chrf++": 30.0, "seq-rep-4": 80.0}
    calm = {"chrf++": 20.0, "seq-rep-4": 5.0}
    assert choose([loop, calm], "chrf++") is calm
    assert choose([loop, {**loop, "chrf++": 10.0}], "chrf++") is loop  # none calm: best score


def test_refuses_a_test_file_and_other_data(run, tmp_path):
    run_dir, _ = run
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.yaml",):
        cfg = yaml.safe_load((run_dir / name).read_text())
        cfg["data"]["eval"] = cfg["data"]["eval"].replace("dev.jsonl", "test.jsonl")
        (copy / name).write_text(yaml.safe_dump(cfg))
    (copy / "adapter").symlink_to(run_dir / "adapter")
    result = CliRunner().invoke(app, ["eval", str(copy), "--tune-decoding"])
    assert result.exit_code == 2 and "looks like a test split" in result.output
    assert not (copy / "decoding.json").exists()
    result = CliRunner().invoke(app, ["eval", str(run_dir), "--tune-decoding", "--data", "x"])
    assert result.exit_code == 2 and "dev split" in result.output


def test_eval_prints_and_stores_the_generation_report(run):
    run_dir, dev = run
    result = CliRunner().invoke(app, ["eval", str(run_dir)], catch_exceptions=False)
    assert "bootstrap 95 % CI" in result.output and "seq-rep-4" in result.output
    report = json.loads((run_dir / "eval.json").read_text())["generation"]
    assert report["examples"] == len(dev) and "chrf++" in report["after"]


def test_multitask_runs_name_their_dev_sources_and_refuse_a_test_task_eval(tmp_path):
    """A multi-task run's dev rows are its trained tasks' eval rows: decoding.json names those
    files, and a task whose eval file is a test split is refused like `data.eval`."""
    from tunelab.run_config import RunConfig
    from tunelab.serve.tune_decoding import _refuse_test_split, dev_description

    for name in ("train", "dev", "test", "other"):
        write_pairs(tmp_path / f"{name}.jsonl", name, 6)
    pairs = {"format": "pairs", "train": str(tmp_path / "train.jsonl")}
    test = str(tmp_path / "test.jsonl")
    tasks = [{"name": "a", **pairs, "eval": str(tmp_path / "dev.jsonl")},
             {"name": "b", **pairs, "train": str(tmp_path / "other.jsonl")},
             {"name": "c", **pairs, "eval": test, "held_out": True}]  # fmt: skip
    cfg = RunConfig.model_validate({"model": {"name": "random:llama"}, "data": {"tasks": tasks}})
    _refuse_test_split(cfg)  # the held-out task's test file is not a dev source
    assert dev_description(cfg) == (
        f"{tmp_path / 'dev.jsonl'}; eval_fraction 0.1 of {tmp_path / 'other.jsonl'}"
    )
    tasks[1]["eval"] = test
    cfg = RunConfig.model_validate({"model": {"name": "random:llama"}, "data": {"tasks": tasks}})
    with pytest.raises(Exception, match="task 'b' eval: .*test.jsonl looks like a test split"):
        _refuse_test_split(cfg)
