"""Multi-task data: rows -> template-rendered examples -> mixture; few-shot exemplars only
from training rows, shared splits, held-out tasks, bad rows named by file and line."""

from __future__ import annotations

import json
import re

import pytest

from tunelab.config import DataConfig
from tunelab.data.multitask import build_multitask
from tunelab.errors import DataError
from tunelab.run_config import load_config

ID = re.compile(r"row(\d+)")


def write_rows(path, count: int):
    rows = [{"q": f"question row{i}", "a": f"answer row{i}", "label": ["red", "blue"][i % 2]}
            for i in range(count)]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def data_config(**data) -> DataConfig:
    return load_config({"data": {"template": "plain", **data}}).data


def qa_task(path, **extra) -> dict:
    return {"name": "qa", "train": str(path), "kind": "qa",
            "fields": {"question": "q", "answer": "a"}, **extra}  # fmt: skip


def ids(text: str) -> set[int]:
    return {int(found) for found in ID.findall(text)}


def test_few_shot_exemplars_never_come_from_eval_rows(tmp_path, plain_tokenizer):
    path = write_rows(tmp_path / "qa.jsonl", 40)
    task = qa_task(path, eval_fraction=0.25, shots=3, few_shot_share=1.0, eval_shots=2)
    data = build_multitask(data_config(tasks=[task]), plain_tokenizer)
    eval_examples = data.eval["qa"]
    eval_ids = {min(ids(e.response)) for e in eval_examples}
    assert len(eval_ids) == 10
    train_ids = set(range(40)) - eval_ids
    few_shot = [e for e in data.train["qa"] if len(ids(e.prompt)) > 1]
    assert few_shot  # few_shot_share=1: exemplars wherever the template shows the question
    for example in data.train["qa"]:
        assert ids(example.prompt) <= train_ids and ids(example.response) <= train_ids
    for example in eval_examples:
        own = ids(example.response)
        assert (ids(example.prompt) - own) <= train_ids  # exemplars: training rows only
        assert len(ids(example.prompt) - own) == 2  # eval_shots


def test_mixture_counts_are_realised_and_seeded(tmp_path, plain_tokenizer):
    path = write_rows(tmp_path / "qa.jsonl", 30)
    add = {"name": "add", "train": "builtin:add", "eval": "builtin:add", "weight": 1.0}
    tasks = [qa_task(path, eval_fraction=0.1, weight=3.0), add]
    cfg = data_config(tasks=tasks, builtin_size=90, max_eval_examples=5,
                      mixture={"strategy": "weights", "total": 40}, seed=3)  # fmt: skip
    data = build_multitask(cfg, plain_tokenizer)
    assert data.counts == {"qa": 30, "add": 10}
    assert {name: len(examples) for name, examples in data.train.items()} == data.counts
    assert {e.task for e in data.train["qa"]} == {"qa"}
    assert len(data.eval["add"]) == 5 and data.eval["add"][0].prompt.startswith("Add the numbers")
    again = build_multitask(cfg, plain_tokenizer)
    assert again.train == data.train and again.eval == data.eval
    other = build_multitask(cfg.model_copy(update={"seed": 4}), plain_tokenizer)
    assert other.train["qa"] != data.train["qa"]


def test_tasks_on_one_file_share_its_split(tmp_path, plain_tokenizer):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"en": f"e row{i}", "xh": f"x row{i}"}) + "\n"
                            for i in range(30)), encoding="utf-8")  # fmt: skip
    directions = [("en-xh", "en", "xh", "English", "isiXhosa"),
                  ("xh-en", "xh", "en", "isiXhosa", "English")]  # fmt: skip
    both = [{"name": name, "train": str(path), "kind": "translation", "eval_fraction": 0.2,
             "fields": {"source": src, "target": tgt}, "source_language": a, "target_language": b}
            for name, src, tgt, a, b in directions]  # fmt: skip
    data = build_multitask(data_config(tasks=both), plain_tokenizer)
    eval_ids = [{min(ids(e.response)) for e in data.eval[name]} for name in ("en-xh", "xh-en")]
    assert eval_ids[0] == eval_ids[1]
    for name in ("en-xh", "xh-en"):
        assert not any(ids(e.prompt + e.response) & eval_ids[0] for e in data.train[name])


def test_held_out_task_is_zero_shot_and_untrained(tmp_path, plain_tokenizer):
    path = write_rows(tmp_path / "cls.jsonl", 20)
    train = write_rows(tmp_path / "train.jsonl", 20)
    tasks = [qa_task(train),
             {"name": "colour", "eval": str(path), "kind": "classification", "held_out": True,
              "fields": {"text": "q"}, "eval_shots": 3}]  # fmt: skip
    data = build_multitask(data_config(tasks=tasks, eval_fraction=0.2), plain_tokenizer)
    assert "colour" not in data.train and "colour" not in data.counts
    examples = data.eval["colour"]
    assert len(examples) == 20
    assert all(len(ids(e.prompt)) == 1 for e in examples)  # zero-shot: only its own row
    assert all(e.options == ("blue", "red") and e.label in ("blue", "red") for e in examples)


def test_missing_field_names_file_and_line(tmp_path, plain_tokenizer):
    path = write_rows(tmp_path / "qa.jsonl", 5)
    lines = path.read_text().splitlines()
    lines[3] = json.dumps({"q": "no answer here"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"qa.jsonl:4: missing field 'a'"):
        build_multitask(data_config(tasks=[qa_task(path)]), plain_tokenizer)


def test_kindless_task_uses_the_format(tmp_path, plain_tokenizer):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"inputs": f"in {i}", "targets": f"out {i}"}) + "\n"
                            for i in range(10)), encoding="utf-8")  # fmt: skip
    task = {
        "name": "aya",
        "train": str(path),
        "fields": {"prompt": "inputs", "response": "targets"},
    }
    data = build_multitask(data_config(tasks=[task], eval_fraction=0.2), plain_tokenizer)
    assert len(data.train["aya"]) == 8 and len(data.eval["aya"]) == 2
    assert all(e.prompt == f"{e.response.replace('out', 'in')}\n" for e in data.train["aya"])
