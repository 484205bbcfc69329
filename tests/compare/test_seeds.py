"""Comparisons over seeds: every variant runs once per seed (train.seed only: same data, same
eval split), resume and failures work per (variant, seed), a bad `seeds` stops before
anything is written, and the aggregation's maths (mean, sd, t-interval, which intervals
separate) matches a hand computation."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.compare import load_compare_config
from tunelab.compare.config import run_configs
from tunelab.compare.seeds import (
    aggregate_rows,
    seed_table,
    seeded_runs,
    separation,
    summarise,
    t_cdf,
    t_quantile,
)
from tunelab.errors import ConfigError
from tunelab.io import read_jsonl

from .conftest import tiny_base

# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ([], "seeds: Value error, name at least one seed"),
        ([0, 1, 0], "seeds: Value error, seed 0 is listed twice"),
        ([0, "one"], "seeds.1: Input should be a valid integer"),
        ([0, 1.5], "seeds.1: Input should be a valid integer"),
        ([True], "seeds.0: Input should be a valid integer"),
        ([-1], "seeds.0: Input should be greater than or equal to 0"),
        (3, "seeds: Input should be a valid list"),
    ],
)
def test_a_bad_seeds_list_is_one_line_exit_2_and_nothing_written(tmp_path, seeds, message):
    output = tmp_path / "out"
    config = {"base": tiny_base(), "methods": ["lora"], "seeds": seeds, "output_dir": str(output)}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["compare", str(path)])
    assert result.exit_code == 2
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith("error:") and f"bad.yaml: {message}" in line
    assert not output.exists()


@pytest.mark.parametrize(
    "fields",
    [
        {"base": {**tiny_base(), "train": {"seed": 3}}},
        {"overrides": {"lora": {"train.seed": 3}}},
        {"variants": {"fast": {"method": "lora", "train": {"seed": 3}}}},
    ],
)
def test_with_seeds_nothing_else_sets_train_seed(comparison_dict, tmp_path, fields):
    raw = comparison_dict(tmp_path, methods=["lora"], seeds=[0, 1], **fields)
    with pytest.raises(ConfigError, match=r"train\.seed: is set by the comparison's seeds"):
        load_compare_config(raw)


def test_each_seed_is_its_own_run_with_only_train_seed_changed(comparison_dict, tmp_path):
    base = tiny_base()
    base["data"]["seed"], base["model"]["seed"] = 7, 5
    cfg = load_compare_config(comparison_dict(tmp_path, base=base, methods=["lora", "prompt"],
                                              seeds=[0, 1, 2]))  # fmt: skip
    runs = seeded_runs(cfg, run_configs(cfg))
    assert [key.label for key in runs] == [f"{m} seed {s}" for m in ("lora", "prompt")
                                           for s in (0, 1, 2)]  # fmt: skip
    assert {run.output_dir for run in runs.values()} == {
        str(tmp_path / "runs" / m / f"seed-{s}") for m in ("lora", "prompt") for s in (0, 1, 2)
    }
    lora = [run for key, run in runs.items() if key.variant == "lora"]
    assert [run.train.seed for run in lora] == [0, 1, 2]
    for run in lora[1:]:  # the same data, eval split, base model and decoding; only the seed
        assert run.data == lora[0].data and run.data.seed == 7
        assert run.model == lora[0].model and run.model.seed == 5
        assert run.eval == lora[0].eval and run.method == lora[0].method
        assert run.train.model_dump(exclude={"seed"}) == lora[0].train.model_dump(exclude={"seed"})


def test_without_seeds_one_run_per_variant_as_before(comparison_dict, tmp_path):
    cfg = load_compare_config(comparison_dict(tmp_path, methods=["lora"]))
    ((key, run),) = seeded_runs(cfg, run_configs(cfg)).items()
    assert key.seed is None and run.output_dir == str(tmp_path / "runs" / "lora")


# --- statistics -----------------------------------------------------------------------------


def test_t_quantiles_match_their_closed_forms():
    for p in (0.9, 0.975, 0.995):  # df 1: tan(pi (p - 1/2)); df 2: (2p - 1) / sqrt(2 p (1 - p))
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-6)  # the 3-seed factor


@pytest.mark.parametrize("df", [3, 4, 7, 12])
def test_t_cdf_matches_the_integrated_density(df):
    density = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    steps = 4000
    for t in (0.5, 1.7, 3.2):  # Simpson's rule from 0 to t, plus the lower half
        h = t / steps
        f = [density * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(steps + 1)]
        area = h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))
        assert t_cdf(t, df) == pytest.approx(0.5 + area, abs=1e-9)
        assert t_cdf(-t, df) == pytest.approx(0.5 - area, abs=1e-9)


def test_summary_of_three_seeds_by_hand():
    stats = summarise([13.0, 14.0, 15.5])
    # mean 42.5 / 3; deviations -7/6, -1/6, 4/3: squares sum to 114/36, / (n-1) = 57/36
    assert stats["mean"] == pytest.approx(42.5 / 3)
    assert stats["sd"] == pytest.approx(math.sqrt(57) / 6)
    half = 4.302652729749 * (math.sqrt(57) / 6) / math.sqrt(3)
    assert (stats["low"], stats["high"]) == pytest.approx((42.5 / 3 - half, 42.5 / 3 + half))
    assert summarise([2.0]) == {"n": 1, "mean": 2.0, "sd": None, "low": None, "high": None,
                                "t": None}  # fmt: skip


def _row(variant, seed, quality, seconds, bleu, status="finished"):
    if status != "finished":
        return {"variant": variant, "method": variant, "run_dir": f"r/{variant}/seed-{seed}",
                "status": status, "error": "Boom: no", "skipped": False, "seed": seed}  # fmt: skip
    return {
        "variant": variant, "method": variant, "run_dir": f"r/{variant}/seed-{seed}",
        "status": "finished", "error": None, "skipped": seed == 0, "seed": seed,
        "quality": quality, "quality_before": 10.0, "train_seconds": seconds, "packing": True,
        "trainable_params": 100, "before": {"chrf++": 10.0}, "after": {"chrf++": quality,
        "bleu": bleu}, "generation": {"after": {"chrf++": {"score": quality, "low": quality - 1,
        "high": quality + 1}, "seq-rep-4": 2.0 * seed}},
    }  # fmt: skip


def test_aggregated_row_holds_means_spread_and_every_seed():
    rows = [_row("lora", seed, q, s, b) for seed, q, s, b in
            [(0, 13.0, 40.0, 1.0), (1, 14.0, 44.0, 2.0), (2, 15.5, 48.0, 3.0)]]  # fmt: skip
    rows.append(_row("lora", 3, None, None, None, "failed"))
    (row,) = aggregate_rows(rows, "chrf++")
    assert row["status"] == "finished" and row["seeds"] == [0, 1, 2]
    assert row["error"] == "seed 3: Boom: no" and not row["skipped"]
    assert row["quality"] == pytest.approx(42.5 / 3) and row["train_seconds"] == 44.0
    assert row["after"] == {"chrf++": pytest.approx(42.5 / 3), "bleu": 2.0}
    assert row["quality_sd"] == pytest.approx(math.sqrt(57) / 6)
    assert row["quality_interval"]["low"] == pytest.approx(summarise([13, 14, 15.5])["low"])
    stats = row["seed_stats"]
    assert stats["quality"]["values"] == {"0": 13.0, "1": 14.0, "2": 15.5}
    assert stats["quality"]["bootstrap"]["1"] == {"score": 14.0, "low": 13.0, "high": 15.0}
    assert stats["bleu"]["sd"] == pytest.approx(1.0) and stats["seq-rep-4"]["mean"] == 2.0
    assert row["run_dir"] == "r/lora/seed-0" and len(row["runs"]) == 4
    assert row["packing"] is True and "generation" not in row
    assert row["trainable_params"] == 100 and isinstance(row["trainable_params"], int)
    results = {"quality_metric": "chrf++", "methods": [row],
               "seeds": {"seeds": [0, 1, 2, 3], "confidence": 0.95}}  # fmt: skip
    headers, (cells,) = seed_table(results)
    assert headers.count("chrf++") == 0 and headers[5:] == ["bleu", "seq-rep-4"]
    assert cells[:4] == ["lora", "3/4", f"14.17 ± {math.sqrt(57) / 6:.2g}", "[11.04, 17.29]"]
    assert cells[4] == "s0: 13 [12, 14]; s1: 14 [13, 15]; s2: 15.5 [14.5, 16.5]"


def test_a_variant_whose_seeds_all_failed_is_failed():
    (row,) = aggregate_rows([_row("a", 0, None, None, None, "failed")], "chrf++")
    assert row["status"] == "failed" and row["error"] == "seed 0: Boom: no"


def test_ranking_only_where_intervals_separate():
    def variant(name, low, high):
        return {"variant": name, "status": "finished", "quality": (low + high) / 2,
                "quality_before": 10.0, "quality_interval": {"low": low, "high": high}}  # fmt: skip

    rows = [variant("b", 12.0, 14.0), variant("a", 15.0, 17.0), variant("c", 9.0, 13.0),
            {**variant("d", 0, 0), "quality": 11.0, "quality_interval": None}]  # fmt: skip
    sep = separation(rows, higher_is_better=True)
    assert sep["ranked"] == [["a", "b"], ["a", "c"]]
    assert sep["not_separated"] == [["b", "c"]]
    assert sep["versus_base"] == {"better": ["a", "b"], "worse": [], "not_separated": ["c"]}
    assert sep["no_interval"] == ["d"]
    lower = separation(rows, higher_is_better=False)  # a loss: lower is better
    assert lower["ranked"] == [["c", "a"], ["b", "a"]]
    assert lower["versus_base"]["worse"] == ["b", "a"]


# --- a real tiny comparison over two seeds --------------------------------------------------


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    config = {"base": tiny_base(), "methods": ["lora"], "seeds": [0, 1], "budget_steps": 2,
              "inference_tokens": 2, "output_dir": str(root / "out")}  # fmt: skip
    config["base"]["eval"]["metrics"] = ["loss", "chrf++"]
    path = root / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["compare", str(path)])
    return path, root / "out", result


def test_seeds_train_distinct_runs_on_the_same_eval_rows(seeded):
    _, output, result = seeded
    assert result.exit_code == 0, result.output
    dirs = [output / "runs" / "lora" / f"seed-{seed}" for seed in (0, 1)]
    configs = [yaml.safe_load((d / "config.yaml").read_text()) for d in dirs]
    assert [c["train"]["seed"] for c in configs] == [0, 1]
    assert configs[0]["data"] == configs[1]["data"] and configs[0]["eval"] == configs[1]["eval"]
    samples = [read_jsonl(d / "samples-after.jsonl") for d in dirs]
    assert [(s["prompt"], s["reference"]) for s in samples[0]] == [
        (s["prompt"], s["reference"]) for s in samples[1]
    ]
    adapters = [(d / "adapter" / "adapter_model.safetensors").read_bytes() for d in dirs]
    assert adapters[0] != adapters[1]  # another initialisation and batch order
    (row,) = json.loads((output / "results.json").read_text())["methods"]
    assert row["seeds"] == [0, 1] and [run["seed"] for run in row["runs"]] == [0, 1]
    assert row["quality_interval"]["n"] == 2
    assert "Across seeds" in (output / "results.md").read_text()
    assert "Across seeds" in (output / "report.html").read_text()
    assert "(2/2 seeds)" in result.output


def test_rerun_skips_the_finished_seed_and_reruns_the_other(seeded):
    path, output, _ = seeded
    done = output / "runs" / "lora" / "seed-0" / "summary.json"
    stamp = done.stat().st_mtime_ns
    (output / "runs" / "lora" / "seed-1" / "summary.json").unlink()  # as if killed mid-run
    result = CliRunner().invoke(app, ["compare", str(path)])
    assert result.exit_code == 0, result.output
    assert done.stat().st_mtime_ns == stamp
    (row,) = json.loads((output / "results.json").read_text())["methods"]
    assert [run["skipped"] for run in row["runs"]] == [True, False]
    assert all(run["status"] == "finished" for run in row["runs"])
