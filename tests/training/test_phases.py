"""Wall time per phase of a run: a real `train` on a tiny model records every phase in
summary.json, the phases add up to the wall time, and the CLI line shows the shares."""

from __future__ import annotations

import json
import time

import pytest

from tunelab import train
from tunelab.training.phases import PHASES, PhaseTimer, format_shares


def test_a_run_records_every_phase_and_they_add_up_to_its_wall_time(tmp_path):
    config = {
        "model": {"name": "random:llama"},
        "data": {"train": "builtin:reverse", "eval": "builtin:reverse", "builtin_size": 32,
                 "max_eval_examples": 4, "max_length": 64},
        "method": {"name": "lora"},
        "train": {"max_steps": 4, "batch_size": 4, "save_every": 2, "eval_every": 2,
                  "progress": False},
        "eval": {"metrics": ["loss", "exact_match"], "max_new_tokens": 4, "forgetting": False},
        "output_dir": str(tmp_path / "run"),
    }  # fmt: skip
    started = time.perf_counter()
    result = train(config)
    elapsed = time.perf_counter() - started
    phases = json.loads((result.run_dir / "summary.json").read_text())["phases"]
    seconds = phases["seconds"]
    assert set(seconds) == {*PHASES, "other"}
    assert sum(seconds.values()) == pytest.approx(phases["wall_seconds"], rel=1e-6)
    assert 0 < phases["wall_seconds"] <= elapsed
    assert all(value >= 0 for value in seconds.values()), seconds
    # every phase this run went through took measurable time (a checkpoint at step 2, eval
    # loss at step 2, generation before and after)
    for name in ("model_load", "data", "eval_before", "train_steps", "eval_periodic",
                 "checkpoints", "eval_after", "report"):  # fmt: skip
        assert seconds[name] > 0, name
    assert seconds["other"] < 0.5 * phases["wall_seconds"], seconds


def test_time_moved_out_of_a_phase_leaves_it_and_other_is_the_rest():
    timer = PhaseTimer()
    before = time.perf_counter()
    with timer.phase("train_steps"):
        time.sleep(0.03)
    block = time.perf_counter() - before  # the phase's time, and a little more
    timer.move("train_steps", "checkpoints", 0.01)
    time.sleep(0.02)  # in no phase: other
    summary = timer.summary()
    seconds = summary["seconds"]
    assert seconds["checkpoints"] == pytest.approx(0.01)
    assert 0.03 - 0.01 <= seconds["train_steps"] <= block - 0.01
    assert seconds["other"] >= 0.02
    assert sum(seconds.values()) == pytest.approx(summary["wall_seconds"])
    with pytest.raises(ValueError, match="unknown phase 'lunch'"):
        timer.start("lunch")


def test_the_shares_line_lists_phases_largest_first_and_drops_tiny_ones():
    seconds = {"train_steps": 80.0, "eval_after": 100.0, "data": 0.5, "other": 19.5}
    phases = {"wall_seconds": 200.0, "seconds": seconds}
    assert format_shares(phases) == "wall 200 s: eval after 50 % · steps 40 % · other 10 %"
