"""build_datasets: builtin tasks, eval splits and caps, all deterministic by seed."""

from __future__ import annotations

import json
import re

import pytest

from tunelab.config import DataConfig
from tunelab.data import BUILTIN_TASKS, build_datasets
from tunelab.errors import DataError


def user_text(prompt: str) -> str:
    """The raw question inside a chat-rendered prompt."""
    return re.search(r"user\n(.*)<\|im_end\|>", prompt).group(1)


@pytest.mark.parametrize("task", sorted(BUILTIN_TASKS))
def test_builtin_task_is_deterministic_and_eval_is_disjoint(tokenizer, task):
    cfg = DataConfig(train=f"builtin:{task}", eval=f"builtin:{task}", builtin_size=300)
    first, second = build_datasets(cfg, tokenizer), build_datasets(cfg, tokenizer)
    assert first == second
    assert len(first.train) == len(first.eval) == 300
    train_prompts = {example.prompt for example in first.train}
    assert len(train_prompts) == 300
    assert train_prompts.isdisjoint(example.prompt for example in first.eval)
    other_seed = build_datasets(cfg.model_copy(update={"seed": 1}), tokenizer)
    assert other_seed.train != first.train


def test_builtin_answers_are_exact(tokenizer):
    def pairs(task):
        cfg = DataConfig(train=f"builtin:{task}", builtin_size=50, eval_fraction=0.0)
        return [(user_text(e.prompt), e.response) for e in build_datasets(cfg, tokenizer).train]

    for question, answer in pairs("reverse"):
        words = question.split(": ", 1)[1].split()
        assert 3 <= len(words) <= 5 and answer.split() == words[::-1]
    for question, answer in pairs("add"):
        first, second = re.findall(r"\d+", question)
        assert int(answer) == int(first) + int(second)
    for question, answer in pairs("sort"):
        numbers = [int(n) for n in question.split(": ", 1)[1].split()]
        assert [int(n) for n in answer.split()] == sorted(numbers)
    for question, answer in pairs("json"):
        record = dict(part.split(": ") for part in question.split(": ", 1)[1].split("; "))
        assert list(json.loads(answer)) == ["name", "age", "city"]
        assert json.loads(answer) == {**record, "age": int(record["age"])}
        assert " " not in answer


def test_unknown_builtin(tokenizer):
    with pytest.raises(DataError, match="builtin:nope: unknown builtin task; known: builtin:"):
        build_datasets(DataConfig(train="builtin:nope"), tokenizer)


def test_eval_fraction_split_is_seeded_and_disjoint(tokenizer):
    cfg = DataConfig(train="builtin:add", builtin_size=200, eval_fraction=0.1, seed=3)
    data = build_datasets(cfg, tokenizer)
    assert (len(data.train), len(data.eval)) == (180, 20)
    assert {e.prompt for e in data.train}.isdisjoint(e.prompt for e in data.eval)
    assert build_datasets(cfg, tokenizer) == data
    assert build_datasets(cfg.model_copy(update={"seed": 4}), tokenizer).eval != data.eval


def test_tiny_split_keeps_one_eval_row(tmp_path, tokenizer):
    path = tmp_path / "two.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n')
    data = build_datasets(DataConfig(train=str(path), eval_fraction=0.01), tokenizer)
    assert (len(data.train), len(data.eval)) == (1, 1)


def test_caps_take_a_seeded_subset_in_file_order(tokenizer):
    cfg = DataConfig(
        train="builtin:sort",
        builtin_size=100,
        max_train_examples=10,
        max_eval_examples=3,
    )
    full = build_datasets(cfg.model_copy(update={"max_train_examples": None}), tokenizer)
    data = build_datasets(cfg, tokenizer)
    assert (len(data.train), len(data.eval)) == (10, 3)
    positions = [full.train.index(example) for example in data.train]
    assert positions == sorted(positions) and positions[-1] > 10  # not simply a prefix
    assert build_datasets(cfg, tokenizer) == data


def test_eval_file(shared_data, tokenizer):
    folder = shared_data / "xhosa/sib200/xho_Latn"
    cfg = DataConfig(
        train=str(folder / "train.tsv"),
        eval=str(folder / "dev.tsv"),
        prompt_field="text",
        response_field="category",
    )
    data = build_datasets(cfg, tokenizer)
    assert (len(data.train), len(data.eval)) == (701, 99)
    assert {e.response for e in data.eval} <= {e.response for e in data.train}
