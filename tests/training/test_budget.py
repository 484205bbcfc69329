"""Example and token budgets: batches are counted and cut exactly, and packed and padded runs
under the same example budget see the same examples (where a step budget does not)."""

from __future__ import annotations

import json
import random

import pytest

from tunelab import train
from tunelab.data import Tokenized, make_batches
from tunelab.errors import DataError
from tunelab.training.budget import Limits, Seen, example_lengths, first_examples, take_window

from .test_loop import tiny_config

IGNORE = -100


def items(count: int, seed: int = 0) -> list[Tokenized]:
    rng = random.Random(seed)
    made = []
    for index in range(count):
        ids = [index] + [rng.randint(0, 255) for _ in range(rng.randint(1, 30))]
        made.append(Tokenized(ids, [IGNORE, *ids[1:]]))
    return made


def batches(data, packing: bool):
    return make_batches(data, batch_size=4, tokens_per_batch=48, packing=packing, pad_id=0,
                        seed=0, epoch=0)  # fmt: skip


def first_tokens(batch) -> list[int]:
    """The first token (= the example's index) of each example in the batch, in order."""
    ids, starts = batch["input_ids"], [0]
    if "position_ids" in batch:
        starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
        return [int(ids[0, start]) for start in starts]
    return ids[:, 0].tolist()


@pytest.mark.parametrize("packing", [True, False])
def test_lengths_and_cuts_follow_the_batch_format(packing):
    data = items(40)
    for batch in batches(data, packing):
        lengths = example_lengths(batch)
        assert lengths == [len(data[index]) for index in first_tokens(batch)]
        if len(lengths) < 2:
            continue
        cut = first_examples(batch, len(lengths) - 1)
        assert first_tokens(cut) == first_tokens(batch)[:-1]
        assert example_lengths(cut) == lengths[:-1]
        assert cut["input_ids"].shape[-1] == (sum if packing else max)(lengths[:-1])


@pytest.mark.parametrize("packing", [True, False])
def test_an_example_budget_is_met_exactly_and_a_token_budget_within_one_example(packing):
    data = items(40)
    window = batches(data, packing)[:3]
    total = sum(len(example_lengths(batch)) for batch in window)
    seen = Seen()
    taken = take_window(window, seen, Limits(examples=total - 2))
    assert seen.examples == total - 2 == sum(len(example_lengths(b)) for b in taken)
    assert take_window(window, seen, Limits(examples=total - 2)) == []  # spent
    seen = Seen()
    taken = take_window(window, seen, Limits(tokens=50))
    kept = [length for batch in taken for length in example_lengths(batch)]
    assert seen.tokens == sum(kept) >= 50 > sum(kept) - kept[-1]  # stops at the crossing one
    seen = Seen()
    assert take_window(window, seen, Limits()) == window  # no limit: counted, not cut
    assert seen.examples == total


def test_packed_and_padded_runs_see_the_same_examples_under_an_example_budget(tmp_path):
    summaries = {}
    for packing in (True, False):
        config = tiny_config(tmp_path / str(packing), data={"packing": packing},
                             train={"max_steps": None, "max_examples": 30},
                             eval={"metrics": ["loss"]})  # fmt: skip
        summaries[packing] = train(config).summary
    packed, padded = summaries[True], summaries[False]
    assert packed["packing"] and not padded["packing"]
    assert packed["examples_seen"] == padded["examples_seen"] == 30
    assert packed["steps"] > padded["steps"] == 8  # 4 examples a padded step; fewer packed
    assert packed["tokens_seen"] > 0 and padded["tokens_seen"] > 0
    for packing in (True, False):  # the loss can be plotted against examples seen
        records = (tmp_path / str(packing) / "run" / "metrics.jsonl").read_text().splitlines()
        seen = [json.loads(line)["examples_seen"] for line in records]
        assert seen == sorted(seen) and seen[-1] == 30


def test_a_step_budget_records_what_each_batching_saw(tmp_path):
    config = tiny_config(tmp_path, train={"max_steps": 3}, eval={"metrics": ["loss"]})
    summary = train(config).summary
    assert summary["packing"] and summary["steps"] == 3
    assert 3 <= summary["examples_seen"] < 12  # packed rows hold fewer than 4 examples here
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text())["tokens_seen"] == summary["tokens_seen"]


def test_a_token_budget_stops_training(tmp_path):
    config = tiny_config(tmp_path, train={"max_steps": None, "max_tokens": 300},
                         eval={"metrics": ["loss"]})  # fmt: skip
    summary = train(config).summary
    assert 300 <= summary["tokens_seen"] < 300 + 96  # within one example (max_length 96)


def test_too_little_data_for_one_step_is_an_error_before_writing(tmp_path):
    config = tiny_config(tmp_path, data={"builtin_size": 4, "packing": False},
                         train={"grad_accum": 4})  # fmt: skip
    with pytest.raises(DataError, match="fewer than one optimizer step takes"):
        train(config)
    assert not (tmp_path / "run").exists()
