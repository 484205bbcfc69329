"""summary.json's `generation` section on a tiny run: intervals and the paired test agree with
the samples the run wrote, signatures are stored, and the CLI shows them."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunelab import train
from tunelab.cli import app
from tunelab.evaluate.significance import bootstrap_interval, paired_bootstrap

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def config(tmp_path):
    return {
        "model": {"name": "random:llama"},
        "data": {
            "train": "builtin:reverse",
            "eval": "builtin:reverse",
            "builtin_size": 24,
            "max_eval_examples": 6,
            "max_length": 64,
        },  # fmt: skip
        "method": {"name": "lora"},
        "train": {"max_steps": 2, "batch_size": 4, "lr": 3e-3, "progress": False},
        "eval": {
            "metrics": ["loss", "chrf++", "bleu"],
            "max_new_tokens": 8,
            "bootstrap_resamples": 40,
            "bootstrap_seed": 5,
        },  # fmt: skip
        "output_dir": str(tmp_path / "run"),
    }


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_summary_holds_intervals_paired_test_and_text_statistics(tmp_path):
    result = train(config(tmp_path))
    report = result.summary["generation"]
    before, after = (
        read(result.run_dir / "samples-before.jsonl"),
        read(result.run_dir / "samples-after.jsonl"),
    )
    references = [s["reference"] for s in after]
    predictions = [s["prediction"] for s in after]
    expected = bootstrap_interval("chrf++", predictions, references, resamples=40, seed=5)
    assert report["after"]["chrf++"] == expected.as_dict()
    assert report["after"]["chrf++"]["score"] == pytest.approx(result.summary["after"]["chrf++"])
    paired = paired_bootstrap("bleu", [s["prediction"] for s in before], predictions, references,
                              resamples=40, seed=5)  # fmt: skip
    assert report["paired"]["bleu"] == paired.as_dict()
    assert report["signatures"]["chrf++"].startswith("chrF2++|nrefs:1|")
    assert {"seq-rep-4", "distinct-2", "length_ratio"} <= set(report["before"])
    assert json.loads((result.run_dir / "summary.json").read_text())["generation"] == report


def test_summary_holds_tokenizer_figures_of_the_train_data(tmp_path):
    from tunelab.data import build_datasets
    from tunelab.models.tiny import byte_tokenizer
    from tunelab.run_config import load_config

    result = train(config(tmp_path))
    figures = result.summary["tokenizer"]
    examples = build_datasets(load_config(config(tmp_path)).data, byte_tokenizer()).train
    responses = [example.response for example in examples]
    assert figures["examples"] == len(examples) == result.summary["train_examples"]
    assert figures["tokens"] == sum(len(text.encode()) for text in responses)  # byte tokens
    assert figures["words"] == sum(len(text.split()) for text in responses)
    assert figures["max_length"] == 64 and 0 <= figures["over_max_length"] <= 100


def test_cli_train_prints_the_generation_table(tmp_path):
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path)))
    output = CliRunner().invoke(app, ["train", str(path)], catch_exceptions=False).output
    assert "bootstrap 95 % CI" in output and "after - before" in output
    assert "seq-rep-4" in output and "chrF2++|nrefs:1" in output
