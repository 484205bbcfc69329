"""The forgetting probe, the inference timing, the wall-time budget (the loop stops
gracefully on StopTraining) and the progress view."""

from __future__ import annotations

import io
import json
import math
import queue

import pytest
from rich.console import Console

import tunelab.compare.measure as measure
from tunelab.compare.measure import forced_length, measure_run, ms_per_token
from tunelab.compare.progress import CompareProgress
from tunelab.compare.worker import MEASUREMENTS, Job, QueueReporter, train_and_measure
from tunelab.data.types import IGNORE
from tunelab.evaluate import generate
from tunelab.evaluate.forgetting import forgetting_batches, forgetting_perplexities
from tunelab.evaluate.probe import PROBE_TEXT, WINDOW, probe_batches, probe_perplexity
from tunelab.models.tiny import random_model
from tunelab.run import load_run
from tunelab.run_config import load_config
from tunelab.training.loop import StopTraining, train

from .conftest import tiny_base


@pytest.fixture(scope="module")
def tiny():
    return random_model("llama")


def test_probe_is_general_prose_in_labelled_windows(tiny):
    _, tokenizer = tiny
    assert len(PROBE_TEXT.split()) > 300 and PROBE_TEXT.count("\n\n") >= 4
    batches = probe_batches(tokenizer)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    assert tokens == len(tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"])
    for batch in batches:
        assert batch["input_ids"].shape[1] <= WINDOW
        assert bool(((batch["labels"] == IGNORE) == (batch["attention_mask"] == 0)).all())


def test_probe_windows_start_with_bos_where_the_tokenizer_adds_one():
    """Gemma's tokenizer starts text with BOS: every probe window does too (the model reads
    text after BOS only), the text is windowed around it and BOS itself is the context, not a
    token scored (a row's first label is never predicted)."""
    from tokenizers import processors

    _, tokenizer = random_model("llama")
    text_ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tokenizer.bos_token} $A", special_tokens=[(tokenizer.bos_token, bos)]
    )
    rows = [
        row[mask.bool()].tolist()
        for batch in probe_batches(tokenizer)
        for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]
    assert all(row[0] == bos and len(row) <= WINDOW for row in rows)
    assert [i for row in rows for i in row[1:]] == text_ids
    assert len(rows) == -(-len(text_ids) // (WINDOW - 1))


def test_probe_perplexity_is_finite(tiny):
    model, tokenizer = tiny
    assert (
        math.isfinite(probe_perplexity(model, tokenizer)) and probe_perplexity(model, tokenizer) > 1
    )


def test_the_loops_english_probe_is_the_compare_probe(tiny):
    """What lets compare reuse the summary's figure: one computation, not two that agree."""
    model, tokenizer = tiny
    cfg = load_config({})
    scores = forgetting_perplexities(model, forgetting_batches(tokenizer, cfg.data, cfg.eval))
    assert scores["english_perplexity"] == probe_perplexity(model, tokenizer)


@pytest.mark.parametrize(
    ("eval_extra", "calls", "source"),
    [({}, 0, "summary.json"), ({"forgetting": False}, 1, "measured"),
     ({"forgetting_text": "other.txt"}, 1, "measured")],
    ids=["probed-in-training", "forgetting-off", "other-probe-text"],
)  # fmt: skip
def test_compare_reuses_the_probe_perplexity_the_run_stored(
    tmp_path, monkeypatch, eval_extra, calls, source
):
    """A compare job (train, then measure) probes the trained model once, in the loop; its
    measurements repeat that figure. Where the loop scored no probe, or another text, compare
    measures the probe itself."""
    if "forgetting_text" in eval_extra:
        (tmp_path / "other.txt").write_text("A different text altogether, read by the loop.")
        eval_extra = {"forgetting_text": str(tmp_path / "other.txt")}
    config = {**tiny_base(), "method": {"name": "lora"}, "output_dir": str(tmp_path / "run")}
    config["train"] = {**config["train"], "max_steps": 1, "progress": False}
    config["eval"] = {"metrics": ["loss"], "before": False, **eval_extra}
    counted = []

    def counting(model, tokenizer):
        counted.append(1)
        return probe_perplexity(model, tokenizer)

    monkeypatch.setattr(measure, "probe_perplexity", counting)
    job = Job("lora", config, str(tmp_path), budget_seconds=None, inference_tokens=2)
    train_and_measure(job, events=queue.SimpleQueue())
    measured = json.loads((tmp_path / "run" / MEASUREMENTS).read_text())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(counted) == calls and measured["probe_source"] == source
    fresh = probe_perplexity(*load_run(tmp_path / "run"))
    assert measured["probe_perplexity"] == pytest.approx(fresh, rel=1e-5)  # honest either way
    if source == "summary.json":
        assert measured["probe_perplexity"] == summary["forgetting"]["english_perplexity"]["after"]


def test_timing_forces_the_length_and_restores_the_config(tiny):
    model, tokenizer = tiny
    before = model.generation_config.min_new_tokens
    with forced_length(model, 6):
        (text,) = generate(model, tokenizer, ["hi"], max_new_tokens=6, batch_size=1)
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 6  # byte tokens
    assert model.generation_config.min_new_tokens == before
    assert ms_per_token(model, tokenizer, load_config({}), tokens=2, rounds=1) > 0


def test_stop_training_ends_the_run_gracefully(tmp_path):
    def stop_after_two(step: int) -> None:
        if step == 2:
            raise StopTraining

    config = {**tiny_base(), "method": {"name": "lora"}, "output_dir": str(tmp_path / "run")}
    config["train"] = {**config["train"], "max_steps": 50, "progress": False}
    config["eval"] = {"metrics": ["loss"]}
    result = train(config, on_step=stop_after_two)
    assert result.summary["steps"] == 2
    assert result.summary["after"]["loss"] > 0 and (result.run_dir / "adapter").is_dir()


def test_a_run_that_cannot_merge_is_measured_unmerged_with_the_reason(tmp_path):
    """BitFit adds MLP biases that Gemma 3's config cannot declare: the study's bitfit runs on
    Gemma must still be measured (unmerged), not fail after training."""
    config = {**tiny_base(), "method": {"name": "bitfit"}, "output_dir": str(tmp_path / "run")}
    config["model"] = {"name": "random:gemma3"}
    config["train"] = {**config["train"], "max_steps": 1, "progress": False}
    config["eval"] = {"metrics": ["loss"], "before": False, "forgetting": False}
    result = train(config)
    measured = measure_run(result.run_dir, load_config(config), tokens=2)
    assert measured["inference_ms_per_token"] > 0
    assert measured["merged_inference_ms_per_token"] is None
    assert "bitfit: gemma3_text cannot declare a bias" in measured["merge_note"]


def test_budget_clock_starts_with_training():
    events = []

    class Events:
        put = staticmethod(events.append)

    reporter = QueueReporter(Events(), "lora", budget_seconds=1e-9)
    reporter.check_budget(1)  # the clock has not started: no stop
    reporter.start("lora", 10)
    with pytest.raises(StopTraining):
        reporter.check_budget(1)
    reporter.update(5, {"loss": 1.5})
    assert events[0] == ("start", "lora", 10, 0)
    assert events[1] == ("update", "lora", 5, 1.0, 1.5)  # time spent: the whole budget


def test_progress_view_follows_the_events():
    console = Console(file=io.StringIO(), width=120, force_terminal=False)
    with CompareProgress(2, console=console) as view:
        view.begin("lora")
        for event in [("start", "lora", 4, 0), ("update", "lora", 2, 0.5, 2.25),
                      ("message", "lora", "evaluating"), ("finish", "lora")]:  # fmt: skip
            view.handle(event)
        view.end("lora", "finished")
        view.begin("prompt")
        view.end("prompt", "failed", "ValueError: bad")
    output = console.file.getvalue()
    assert "lora: finished" in output and "prompt: failed (ValueError: bad)" in output
    assert view.finished == 2
