"""results.md and report.html from hand-made run directories (no training): rows, winners,
Pareto fronts, a self-contained page with every chart embedded."""

from __future__ import annotations

import base64
import json
import re

from tunelab.compare.report import render_report, rich_table
from tunelab.compare.results import build_results, markdown, method_row
from tunelab.compare.worker import MEASUREMENTS

BASE = {"model": "random:llama", "probe_perplexity": 100.0, "inference_ms_per_token": 5.0}
FAKE = {  # method: (trainable, seconds, memory, quality after, probe perplexity, merged ms)
    "lora": (5000, 20.0, 900.0, 60.0, 104.0, 5.1),
    "prompt": (800, 15.0, 700.0, 40.0, 100.5, None),
    "full": (100000, 60.0, 2000.0, 65.0, 130.0, 5.0),
    "ia3": (1000, 30.0, 800.0, 30.0, 101.0, 5.0),  # dominated on both fronts
}


def fake_run(root, name, trainable, seconds, memory, quality, probe, merged):
    run = root / "runs" / name
    run.mkdir(parents=True)
    summary = {
        "trainable_params": trainable, "total_params": 100000,
        "trainable_percent": trainable / 1000, "adapter_bytes": trainable * 4, "steps": 10,
        "train_seconds": seconds, "train_tokens_per_second": 1000 / seconds,
        "peak_memory_mb": memory, "final_train_loss": 1.0, "lr": 1e-3,
        "before": {"loss": 3.0, "exact_match": 10.0},
        "after": {"loss": 1.0, "exact_match": quality},
    }  # fmt: skip
    measured = {"probe_perplexity": probe, "inference_ms_per_token": 6.0,
                "merged_inference_ms_per_token": merged}  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    (run / MEASUREMENTS).write_text(json.dumps(measured))
    lines = [json.dumps({"step": s, "loss": 3.0 / s, "lr": 1e-3}) for s in range(1, 11)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def fake_results(tmp_path) -> dict:
    rows = [
        method_row(name, fake_run(tmp_path, name, *values), {"status": "finished", "error": None,
                   "skipped": False}, "exact_match", BASE)
        for name, values in FAKE.items()
    ]  # fmt: skip
    failed = {"status": "failed", "error": "ValueError: <boom> & more", "skipped": False}
    rows.append(method_row("dora", tmp_path / "runs" / "dora", failed, "exact_match", BASE))
    budget = {"steps": 10, "seconds": None}
    return build_results(rows, quality="exact_match", higher_is_better=True, base=BASE,
                         budget=budget)  # fmt: skip


def test_rows_winners_and_fronts(tmp_path):
    results = fake_results(tmp_path)
    rows = {row["method"]: row for row in results["methods"]}
    assert rows["lora"]["forgetting"] == 4.0 and rows["lora"]["forgetting_percent"] == 4.0
    assert rows["dora"]["status"] == "failed" and "trainable_params" not in rows["dora"]
    assert results["best"]["quality"] == ["full"]
    assert results["best"]["trainable_params"] == ["prompt"]
    assert results["best"]["forgetting_percent"] == ["prompt"]
    assert results["best"]["merged_inference_ms_per_token"] == ["full", "ia3"]
    assert results["pareto"]["quality_vs_trainable_params"] == ["prompt", "lora", "full"]
    assert results["pareto"]["quality_vs_train_seconds"] == ["prompt", "lora", "full"]
    json.dumps(results)  # plain data


def test_markdown_has_every_method_and_bold_winners(tmp_path):
    text = markdown(fake_results(tmp_path))
    for name in [*FAKE, "dora"]:
        assert re.search(rf"^\| {name} \|", text, re.MULTILINE)
    assert "**10 → 65**" in text
    assert "Pareto-optimal for exact_match vs trainable parameters: prompt, lora, full" in text


def test_report_is_self_contained_with_every_chart(tmp_path):
    page = render_report(fake_results(tmp_path))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for data in images)
    for name in [*FAKE, "dora"]:
        assert f"<tr><td>{name}</td>" in page or f'<tr class="failed"><td>{name}</td>' in page
    assert "&lt;boom&gt; &amp; more" in page  # text is escaped
    assert page.count('class="best"') >= 9


def test_terminal_table_lists_every_method(tmp_path):
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(rich_table(fake_results(tmp_path)))
    text = console.export_text()
    assert all(name in text for name in [*FAKE, "dora"])
    assert "dora: ValueError: <boom> & more" in text
