"""Multi-task runs end to end on a tiny model: the mixture in the run directory, per-task
metrics before and after (held-out tasks zero-shot), macro averages, and forgetting for every
run, single-task ones included."""

from __future__ import annotations

import json

import pytest

from tunelab import train
from tunelab.errors import DataError
from tunelab.serve.evaluation import evaluate_saved_run
from tunelab.training.progress import SilentReporter

LABELS = ["red", "blue", "green"]


class Recorder(SilentReporter):
    """A reporter that keeps the loop's messages."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)


def colour_rows(path, count: int, offset: int = 0):
    rows = [{"sentence": f"item {offset + i} is {LABELS[i % 3]}", "colour": LABELS[i % 3]}
            for i in range(count)]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def multitask_config(tmp_path) -> dict:
    colours = {"kind": "classification", "fields": {"text": "sentence", "label": "colour"}}
    return {
        "model": {"name": "random:llama"},
        "data": {
            "max_length": 96, "builtin_size": 40, "max_eval_examples": 4,
            "tasks": [
                {"name": "reverse", "train": "builtin:reverse", "eval": "builtin:reverse",
                 "metrics": ["loss", "exact_match"]},
                {"name": "colours", "train": colour_rows(tmp_path / "c.jsonl", 24), **colours},
                {"name": "colours-new", "eval": colour_rows(tmp_path / "n.jsonl", 6, 100),
                 "held_out": True, **colours},
                {"name": "sort", "train": "builtin:sort", "replay": True},
            ],
            "mixture": {"cap": 20, "replay_share": 0.2},
        },
        "method": {"name": "lora"},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 3e-3, "progress": False},
        "eval": {"metrics": ["loss"], "max_new_tokens": 4},
        "output_dir": str(tmp_path / "run"),
    }  # fmt: skip


def test_summary_has_tasks_mixture_and_forgetting(tmp_path):
    result = train(multitask_config(tmp_path))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    tasks = summary["tasks"]
    assert list(tasks) == ["reverse", "colours", "colours-new", "sort"]
    assert [t["role"] for t in tasks.values()] == ["train", "train", "held_out", "replay"]
    assert tasks["colours-new"]["zero_shot"] and not tasks["colours"]["zero_shot"]
    assert set(tasks["colours"]["after"]) == {"loss", "accuracy", "option_accuracy"}
    assert set(tasks["colours-new"]["before"]) == {"loss", "accuracy", "option_accuracy"}
    assert set(tasks["reverse"]["after"]) == {"loss", "exact_match"}
    assert tasks["colours-new"]["eval_examples"] == 4  # data.max_eval_examples per task
    trained = summary["tasks_macro"]["trained"]
    losses = [tasks[name]["after"]["loss"] for name in ("reverse", "colours", "sort")]
    assert trained["tasks"] == 3 and trained["after"]["loss"] == pytest.approx(sum(losses) / 3)
    assert summary["tasks_macro"]["held_out"]["tasks"] == 1
    # the mixture: 20 (cap) + 20 + 10 replay (20 % of 50); held-out tasks get none
    mixture = {
        row["task"]: row for row in json.loads((result.run_dir / "mixture.json").read_text())
    }
    assert [mixture[n]["examples"] for n in tasks] == [20, 20, 0, 10]
    assert summary["mixture"] == list(mixture.values())
    assert sum(row["token_share"] for row in mixture.values()) == pytest.approx(1.0)
    assert mixture["colours-new"]["tokens"] == 0 and mixture["colours"]["tokens"] > 0
    assert summary["train_examples"] == 50
    for probe in ("english_perplexity", "instruction_perplexity"):
        values = summary["forgetting"][probe]
        assert values["change"] == pytest.approx(values["after"] - values["before"])
    samples = (result.run_dir / "samples-after-tasks.jsonl").read_text().splitlines()
    generated = set(tasks) - {"sort"}  # sort's metrics are loss only: nothing to generate
    assert {json.loads(line)["task"] for line in samples} == generated
    # `tunelab eval` on the saved run scores the same eval split (trained tasks' eval rows)
    scores = evaluate_saved_run(result.run_dir, metrics=["loss"])
    assert scores["loss"] == pytest.approx(summary["after"]["loss"], rel=1e-4)


def test_single_task_run_measures_forgetting(tmp_path):
    config = multitask_config(tmp_path)
    config["data"] = {"train": "builtin:reverse", "builtin_size": 24, "max_length": 96}
    config["eval"]["forgetting_instructions"] = colour_rows(tmp_path / "i.jsonl", 3)
    with pytest.raises(DataError, match="missing field 'instruction'"):
        train(config)  # bad probe files fail before anything is written
    assert not (tmp_path / "run").exists()
    config["eval"]["forgetting_instructions"] = None
    summary = train(config).summary
    assert "tasks" not in summary and "mixture" not in summary
    assert set(summary["forgetting"]) == {"english_perplexity", "instruction_perplexity"}
    assert summary["forgetting"]["english_perplexity"]["before"] > 1.0


def test_the_eval_split_loss_is_pooled_from_the_tasks_losses(tmp_path, monkeypatch):
    """The split is the trained tasks' eval rows: its loss is their token-weighted mean, taken
    from the per-task scores rather than computed a second time; a split that also asks for
    a generation metric is scored on its own."""
    from tunelab.training import evaluation

    calls: list[str] = []
    real = evaluation.evaluate_run
    monkeypatch.setattr(evaluation, "evaluate_run", lambda *a, **k: calls.append(k["tag"])
                        or real(*a, **k))  # fmt: skip
    cfg = multitask_config(tmp_path)
    pooled = Recorder()
    summary = json.loads((train(cfg, reporter=pooled).run_dir / "summary.json").read_text())
    assert calls == []  # pooled before and after
    split = f"evaluating the base model on {summary['eval_examples']} examples"
    assert split not in pooled.messages  # the messages say what is done: no split evaluation
    assert "the base model: the eval split's loss is pooled from the trained tasks' losses" in (
        pooled.messages
    )
    for name, task in summary["tasks"].items():  # each task evaluated, and said so
        said = f"evaluating the base model on task {name} ({task['eval_examples']} examples)"
        assert (said in pooled.messages) == (task["eval_examples"] > 0), name
    assert "evaluating the base model on the forgetting probes" in pooled.messages
    fresh = evaluate_saved_run(tmp_path / "run", metrics=["loss", "perplexity"])
    assert summary["after"]["loss"] == pytest.approx(fresh["loss"], rel=1e-5)
    assert summary["after"]["perplexity"] == pytest.approx(fresh["perplexity"], rel=1e-5)
    trained = [t for t in summary["tasks"].values() if t["role"] != "held_out"]
    low, high = sorted(t["before"]["loss"] for t in trained)[:: len(trained) - 1]
    assert low < summary["before"]["loss"] < high  # a weighted mean of the tasks' losses
    cfg.update(output_dir=str(tmp_path / "gen"), eval={"metrics": ["loss", "chrf"],
                                                       "max_new_tokens": 2})  # fmt: skip
    scored = Recorder()
    train(cfg, reporter=scored)
    assert calls == ["before", "after"]
    assert split in scored.messages and not any("pooled" in m for m in scored.messages)


def test_eval_on_another_file_reads_it_as_the_first_task(tmp_path):
    """`tunelab eval RUN --data FILE` on a multi-task run: the file's rows are read with the
    first trained task's format and fields (the task the run generates for), so scoring that
    task's own eval file gives that task's loss."""
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"en": f"say {word}", "xh": f"{word} {word}"} for word in "abcdefghijklmnop"]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]), encoding="utf-8")
    config = multitask_config(tmp_path)
    config["data"]["tasks"] = [
        {"name": "pairs", "train": str(pairs), "eval": str(held), "format": "pairs",
         "fields": {"prompt": "en", "response": "xh"}},
        config["data"]["tasks"][1],  # colours: another kind, rendered by its template
    ]  # fmt: skip
    summary = train(config).summary
    scores = evaluate_saved_run(tmp_path / "run", metrics=["loss"], data=str(held))
    assert scores["loss"] == pytest.approx(summary["tasks"]["pairs"]["after"]["loss"], rel=1e-4)
    record = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert record["data"] == str(held)
