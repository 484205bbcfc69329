"""Comparisons over variants: every variant's run config resolved from base + its overrides
(dotted keys or nested sections), validated up front with errors naming the variant and the
key; outputs side by side in the report, escaped."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.compare import load_compare_config
from tunelab.compare.config import run_configs
from tunelab.compare.report import loss_axis, loss_curves, render_report
from tunelab.compare.results import markdown
from tunelab.compare.samples import side_by_side
from tunelab.errors import ConfigError

from .test_report import fake_results


def with_base_method(comparison_dict, tmp_path, **fields):
    raw = comparison_dict(tmp_path, **fields)
    raw["base"]["method"] = {"name": "lora", "r": 4}
    raw["base"]["train"]["lr"] = 0.01
    return raw


def test_variants_override_base_by_dotted_keys_and_nested_sections(comparison_dict, tmp_path):
    raw = with_base_method(comparison_dict, tmp_path, budget_steps=None, budget_examples=24,
                           variants={"base-as-is": {},
                                     "wide": {"method.r": 16, "train": {"lr": 0.002}},
                                     "padded": {"data": {"packing": False}},
                                     "bitfit": {"method": "bitfit"}})  # fmt: skip
    configs = run_configs(load_compare_config(raw))
    assert list(configs) == ["base-as-is", "wide", "padded", "bitfit"]
    assert configs["base-as-is"].method.r == 4 and configs["base-as-is"].train.lr == 0.01
    assert configs["wide"].method.r == 16 and configs["wide"].train.lr == 0.002
    assert configs["wide"].train.batch_size == 4  # a nested section merges, keeps the rest
    assert configs["padded"].data.packing is False and configs["padded"].data.max_length == 64
    assert configs["bitfit"].method.name == "bitfit"  # lora's r does not follow it
    assert configs["bitfit"].output_dir == str(tmp_path / "runs" / "bitfit")
    for run in configs.values():
        assert run.train.max_examples == 24 and run.train.max_steps is None


def test_methods_and_variants_together_methods_first(comparison_dict, tmp_path):
    raw = comparison_dict(
        tmp_path,
        methods=["prompt"],
        variants={"lora-fast": {"method": {"name": "lora"}, "train.lr": 0.01}},
    )
    configs = run_configs(load_compare_config(raw))  # fmt: skip
    assert list(configs) == ["prompt", "lora-fast"]
    assert configs["prompt"].train.lr is None and configs["lora-fast"].train.lr == 0.01


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ({"fast": {"method": "lora", "train": {"lrr": 1}}}, "variant fast: train.lrr: unknown key"),
        ({"fast": {"method": "lora", "train.lr": -1}}, "variant fast: train.lr: Input should be"),
        ({"x": {"method": "lora", "method.rank": 2}}, "variant x: method.rank: unknown key"),
        ({"odd": {"method": "nope"}}, "variant odd: method.name: unknown method 'nope'"),
        ({"no-method": {"train.lr": 0.1}}, "variant no-method: method: name one"),
        ({"a/b": {"method": "lora"}}, r"variants.a/b: a name is a folder name"),
        ({"x": {"method": "lora", "train": {"max_steps": 9}}}, "x.train.max_steps: is set by the"),
        ({"x": {"method": "lora", "output_dir": "y"}}, "variants.x.output_dir: is set by"),
        (
            {"ok": {"method": "lora"}, "x": {"method": "lora", "eval.metrics": ["loss"]}},
            "variant x: eval.metrics: lacks 'exact_match'",
        ),
        ({"x": {"method": "lora", "data.eval": "missing.jsonl"}}, "x: data.eval: no such file"),
        ({"x": {"method": "lora", "data.packing": {"a": 1}}}, "x: data.packing: Input should"),
    ],
)
def test_a_bad_variant_names_itself_and_the_key(comparison_dict, tmp_path, variants, message):
    raw = comparison_dict(tmp_path, variants=variants)
    with pytest.raises(ConfigError, match=message):
        run_configs(load_compare_config(raw))


def test_a_tokenizer_that_cannot_be_extended_stops_the_comparison_before_any_run(
    comparison_dict, tmp_path, monkeypatch
):
    """Vocabulary variants are checked before the first variant trains: a tokenizer that cannot
    be extended is refused with the variant's name; each model's tokenizer is loaded once."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from tunelab.models import tokenizer_report
    from tunelab.models.tiny import byte_tokenizer

    word_level = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    )
    loaded, tokenizer = [], byte_tokenizer()
    monkeypatch.setattr(tokenizer_report, "load_tokenizer",
                        lambda name: loaded.append(name) or tokenizer)  # fmt: skip
    vocab = {"method": "lora", "model.extend_vocab": {"corpus": "train", "new_tokens": 8}}
    variants = {"plain": {"method": "lora"}, "vocab": vocab, "vocab-2": vocab}
    raw = comparison_dict(tmp_path / "out", variants=variants)
    assert set(run_configs(load_compare_config(raw))) == {"plain", "vocab", "vocab-2"}
    assert loaded == [raw["base"]["model"]["name"]]
    tokenizer = word_level
    with pytest.raises(ConfigError, match="variant vocab: model.extend_vocab: only byte-level"):
        run_configs(load_compare_config(raw))
    assert not (tmp_path / "out").exists()


def test_a_variant_may_not_take_a_listed_methods_name(comparison_dict, tmp_path):
    raw = comparison_dict(tmp_path, methods=["lora"], variants={"lora": {"method.r": 2}})
    with pytest.raises(ConfigError, match="variants.lora: the name is taken by a method"):
        load_compare_config(raw)


def test_cli_rejects_a_bad_variant_in_one_line_and_writes_nothing(comparison_dict, tmp_path):
    output = tmp_path / "out"
    raw = comparison_dict(
        output, variants={"ok": {"method": "lora"}, "bad": {"method": "lora", "train": {"lrr": 1}}}
    )
    path = tmp_path / "compare.yaml"  # fmt: skip
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["compare", str(path), "--budget-examples", "8"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "variant bad: train.lrr: unknown key" in result.output
    assert not output.exists()


def fake_samples(run_dir, prompts_and_predictions, name="samples-after.jsonl"):
    lines = [json.dumps({"prompt": p, "reference": r, "prediction": out})
             for p, r, out in prompts_and_predictions]  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / name).write_text("\n".join(lines) + "\n")


def test_outputs_are_matched_by_eval_row_and_flagged_when_prompted_differently(tmp_path):
    rows = [{"variant": name, "status": "finished", "run_dir": str(tmp_path / name)}
            for name in ("a", "b", "c")] + [{"variant": "d", "status": "failed",
                                             "run_dir": str(tmp_path / "d")}]  # fmt: skip
    fake_samples(tmp_path / "a", [("P1", "R1", "a1"), ("P2", "R2", "a2"), ("P3", "R3", "a3")])
    fake_samples(tmp_path / "b", [("Q1", "R1", "b1"), ("Q2", "R2", "b2")])  # own template
    fake_samples(tmp_path / "c", [("P1", "other", "c1"), ("P2", "R2", "c2")])  # other data
    fake_samples(tmp_path, [("P1", "R1", "base1")], name="samples-before.jsonl")
    shown = side_by_side(rows, tmp_path, count=2)
    assert [s["prompt"] for s in shown] == ["P1", "P2"]
    assert shown[0]["base"] == {"text": "base1", "same_prompt": True}
    assert shown[1]["base"] is None
    assert shown[0]["outputs"]["a"] == {"text": "a1", "same_prompt": True}
    assert shown[0]["outputs"]["b"] == {"text": "b1", "same_prompt": False}
    assert shown[0]["outputs"]["c"] is None and shown[1]["outputs"]["c"]["text"] == "c2"
    assert "d" not in shown[0]["outputs"]


def test_report_shows_outputs_side_by_side_escaped_and_what_each_variant_changes(tmp_path):
    results = fake_results(tmp_path)
    results["variants"] = {"lora": {"method": "lora", "train": {"lr": 0.002}}}
    results["samples"] = [{"prompt": "Say <b>hi</b>", "reference": "hi & bye",
                           "base": {"text": "<script>x</script>", "same_prompt": True},
                           "outputs": {"lora": {"text": "hi", "same_prompt": True},
                                       "prompt": None}}]  # fmt: skip
    page = render_report(results)
    assert "Outputs side by side" in page and "Say &lt;b&gt;hi&lt;/b&gt;" in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script" not in page
    assert "reference: hi &amp; bye" in page
    assert "<td>lora</td><td>hi</td>" in page and "<td>prompt</td><td>-</td>" in page
    assert "<th>variant</th>" in page and "lora: method=lora, train.lr=0.002" in page
    assert "lora: method=lora, train.lr=0.002" in markdown(results)


def test_loss_is_plotted_against_examples_under_an_example_budget(tmp_path):
    results = fake_results(tmp_path)
    assert loss_axis(results) == ("step", "optimizer step")
    results["budget"] = {"examples": 100, "steps": None}
    assert loss_axis(results) == ("examples_seen", "training examples seen")
    metrics = tmp_path / "runs" / "lora" / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 2.0, "examples_seen": 3}\n'
                       '{"step": 2, "loss": 1.5, "examples_seen": 7}\n')  # fmt: skip
    assert loss_curves(results, "examples_seen")["lora"] == [(3, 2.0), (7, 1.5)]
