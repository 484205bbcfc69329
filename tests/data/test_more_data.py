"""More data, used well: a row filter on a numeric field (alignment scores), long plain text
cut into pieces instead of truncated, and continued pretraining on several text files, each
reported as its own source."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunelab import train
from tunelab.cli import app
from tunelab.config import DataConfig
from tunelab.data import Example, build_datasets, tokenize_examples
from tunelab.errors import ConfigError, DataError
from tunelab.run_config import load_config
from tunelab.task_config import RowFilter

IGNORE = -100


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def scored(path, scores) -> str:
    rows = [{"en": f"line {i}", "xho": f"umgca {i}", "score": s} for i, s in enumerate(scores)]
    return write_jsonl(path, rows)


def test_filter_drops_low_scores_in_train_and_eval(tmp_path, tokenizer):
    train_file = scored(tmp_path / "t.jsonl", [0.9, 0.5, 0.8, "0.95", 0.79])
    eval_file = scored(tmp_path / "e.jsonl", [0.1, 0.99])
    cfg = DataConfig(train=train_file, eval=eval_file, prompt_field="en", response_field="xho",
                     filter={"field": "score", "min": 0.8})  # fmt: skip
    data = build_datasets(cfg, tokenizer)
    assert [e.response for e in data.train] == ["umgca 0", "umgca 2", "umgca 3"]
    assert [e.response for e in data.eval] == ["umgca 1"]


@pytest.mark.parametrize(("value", "shown"), [("high", "'high'"), (None, "missing field")])
def test_filter_names_file_and_row_of_a_bad_value(tmp_path, tokenizer, value, shown):
    rows = [{"en": "a", "xho": "b", "score": 0.9}, {"en": "c", "xho": "d", "score": value}]
    if value is None:
        del rows[1]["score"]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    cfg = DataConfig(train=path, prompt_field="en", response_field="xho",
                     filter={"field": "score", "min": 0.8})  # fmt: skip
    with pytest.raises(DataError, match=rf"t\.jsonl:2: .*{shown}"):
        build_datasets(cfg, tokenizer)


def test_filter_settings_are_checked_at_load():
    with pytest.raises(ValueError, match="give min, max or both"):
        RowFilter(field="score")
    with pytest.raises(ConfigError, match="data.filter has no effect with data.tasks"):
        load_config({"data": {"filter": {"field": "s", "min": 0},
                              "tasks": [{"name": "a", "train": "builtin:add"}]}})  # fmt: skip


def test_per_task_filter_and_the_cli_error(tmp_path, tokenizer):
    path = scored(tmp_path / "p.jsonl", [0.2, 0.9, 0.85, 0.95])
    task = {"name": "sona", "train": path, "kind": "translation", "eval_fraction": 0.0,
            "fields": {"source": "en", "target": "xho"}, "source_language": "English",
            "target_language": "isiXhosa", "filter": {"field": "score", "min": 0.8}}  # fmt: skip
    from tunelab.data.multitask import build_multitask

    data = build_multitask(DataConfig(tasks=[task]), tokenizer)
    assert sorted(values["target"] for values, _ in data.tasks[0].train) == [
        "umgca 1", "umgca 2", "umgca 3"]  # fmt: skip
    bad = scored(tmp_path / "bad.jsonl", [0.9, "n/a"])
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({
        "model": {"name": "random:llama"}, "output_dir": str(tmp_path / "run"),
        "data": {"tasks": [{**task, "train": bad}]}}))  # fmt: skip
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert "bad.jsonl:2: field 'score' is 'n/a', not a number" in result.stderr
    assert not (tmp_path / "run").exists()


def test_chunk_text_learns_every_token_once(tokenizer):
    text = "abcdefghijklmnopqrstuvwxyz" * 3
    cfg = DataConfig(format="text", max_length=16, chunk_text=True)
    items = tokenize_examples([Example("", text, source="f:1")], tokenizer, cfg)
    whole = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(items) > 1 and all(len(item) <= 16 for item in items)
    learned = [
        t
        for item in items
        for t, label in zip(item.input_ids, item.labels, strict=True)
        if label != IGNORE
    ]
    assert learned == whole[1:]  # every token after the first, once, in order
    for before, after in zip(items, items[1:], strict=False):
        assert after.input_ids[0] == before.input_ids[-1]  # context carried over
    truncated = tokenize_examples([Example("", text)], tokenizer, DataConfig(max_length=16))
    assert len(truncated) == 1 and len(truncated[0]) == 16


def test_text_training_on_several_files_reports_each_source(tmp_path):
    news = write_jsonl(tmp_path / "news.jsonl", [{"text": f"iindaba {i} " * 20} for i in range(12)])
    stories = tmp_path / "stories.txt"
    stories.write_text("".join(f"ibali {i} kunye nomntwana\n" for i in range(12)))
    config = {
        "model": {"name": "random:llama"},
        "data": {"max_length": 32, "chunk_text": True, "max_eval_examples": 3,
                 "tasks": [{"name": "news", "train": news, "format": "text"},
                           {"name": "stories", "train": str(stories), "format": "text",
                            "eval_fraction": 0.0}],
                 "mixture": {"cap": None}},
        "method": {"name": "lora"},
        "train": {"max_steps": 2, "batch_size": 4, "progress": False},
        "eval": {"metrics": ["loss"], "forgetting": False},
        "output_dir": str(tmp_path / "run"),
    }  # fmt: skip
    summary = train(config).summary
    assert set(summary["tasks"]) == {"news", "stories"}
    news = summary["tasks"]["news"]
    assert news["after"]["loss"] > 0 and news["before"]["loss"] > 0
    assert summary["tasks"]["stories"]["after"] == {}  # no eval rows: trained, not scored
    news_mix = next(row for row in summary["mixture"] if row["task"] == "news")
    assert news_mix["tokens"] > news_mix["train_rows"] * 32  # pieces, not truncated rows
