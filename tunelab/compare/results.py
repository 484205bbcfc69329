"""The comparison's results: one row per variant (from its run directory), the best variant
per criterion, the Pareto fronts, a few outputs side by side; written as `results.json` and
`results.md`. A method compared as such is a variant named after it; the rows keep the key
`methods` and each row its `method` (the method the run used) beside its `variant` name.

A row holds the five trade-offs and more: trainable parameters (count, %), artifact size,
training seconds and tokens/s, peak memory, quality before/after (every configured metric),
forgetting (probe perplexity change against the base model) and inference cost (ms per
generated token, unmerged and merged), and what the budget bought: `examples_seen` and
`tokens_seen`; `generation`: summary.json's intervals, paired test and repetition figures.
A failed variant's row has `status: failed` and its `error`, and no numbers. With `seeds:`, a
row is a variant's runs over the seeds, aggregated (compare.seeds): means, the quality's spread
and interval, every seed's own row under `runs`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunelab.compare.config import flat_items
from tunelab.compare.ranking import best_by, pareto_front
from tunelab.compare.seeds import markdown_section as seeds_markdown
from tunelab.compare.tasks import markdown_section, quality_pair, row_blocks
from tunelab.compare.worker import MEASUREMENTS

SUMMARY_FIELDS = (
    "trainable_params", "total_params", "trainable_percent", "adapter_bytes", "steps",
    "train_seconds", "train_tokens_per_second", "peak_memory_mb", "final_train_loss", "lr",
    "examples_seen", "tokens_seen", "packing", "before", "after", "generation",
)  # fmt: skip
MEASURED_FIELDS = ("probe_perplexity", "inference_ms_per_token", "merged_inference_ms_per_token",
                   "merge_note")  # fmt: skip


@dataclass(frozen=True)
class Criterion:
    """A column of the table that has a winner."""

    key: str  # field of a result row
    label: str
    higher_is_better: bool
    show: Callable[[dict[str, Any]], str]


def criteria(quality: str, higher_is_better: bool) -> list[Criterion]:
    """The ranked columns, in table order."""
    return [
        Criterion("quality", f"{quality} before→after", higher_is_better, _show_quality),
        Criterion("trainable_params", "trainable", False, _show_trainable),
        Criterion("adapter_bytes", "artifact", False, lambda r: human_bytes(r["adapter_bytes"])),
        Criterion("train_seconds", "train s", False, lambda r: f"{r['train_seconds']:.1f}"),
        Criterion(
            "train_tokens_per_second",
            "tokens/s",
            True,
            lambda r: f"{r['train_tokens_per_second']:,.0f}",
        ),  # fmt: skip
        Criterion("peak_memory_mb", "peak MB", False, lambda r: f"{r['peak_memory_mb']:,.0f}"),
        Criterion("forgetting_percent", "forgetting", False, _show_forgetting),
        Criterion(
            "inference_ms_per_token",
            "ms/tok",
            False,
            lambda r: _number(r["inference_ms_per_token"], "{:.2f}"),
        ),  # fmt: skip
        Criterion(
            "merged_inference_ms_per_token",
            "ms/tok merged",
            False,
            lambda r: _number(r["merged_inference_ms_per_token"], "{:.2f}"),
        ),  # fmt: skip
    ]


def method_row(name: str, run_dir: Path, outcome: dict[str, Any], quality: str, base: dict,
               *, method: str | None = None):  # fmt: skip
    """One variant's result row from its run directory (`outcome`: status, error, skipped;
    `method`: the method it ran, when its name is not that method's)."""
    row: dict[str, Any] = {"variant": name, "method": method or name, "run_dir": str(run_dir),
                           **outcome}  # fmt: skip
    if outcome["status"] != "finished":
        return row
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    measured = json.loads((run_dir / MEASUREMENTS).read_text(encoding="utf-8"))
    row.update({key: summary.get(key) for key in SUMMARY_FIELDS})
    row.update({key: measured.get(key) for key in MEASURED_FIELDS})
    row["quality_before"], row["quality"] = quality_pair(summary, quality)
    row.update(row_blocks(summary, run_dir))
    base_ppl = base.get("probe_perplexity")
    if base_ppl:
        row["forgetting"] = row["probe_perplexity"] - base_ppl
        row["forgetting_percent"] = 100.0 * row["forgetting"] / base_ppl
    return row


def build_results(rows: list[dict], *, quality: str, higher_is_better: bool, base: dict,
                  budget: dict[str, Any], variants: dict[str, dict] | None = None,
                  samples: list[dict] | None = None) -> dict[str, Any]:  # fmt: skip
    """The whole results document: rows, winners per criterion, Pareto fronts; `variants`:
    each named variant's overrides; `samples`: outputs side by side (see compare.samples)."""
    done = [row for row in rows if row["status"] == "finished"]
    best = {
        c.key: best_by(
            {r["variant"]: r.get(c.key) for r in done}, higher_is_better=c.higher_is_better
        )
        for c in criteria(quality, higher_is_better)
    }
    fronts = {
        "quality_vs_trainable_params": _front(done, "trainable_params", higher_is_better),
        "quality_vs_train_seconds": _front(done, "train_seconds", higher_is_better),
    }
    return {
        "quality_metric": quality,
        "quality_higher_is_better": higher_is_better,
        "budget": budget,
        "base": base,
        "methods": rows,
        "variants": variants or {},
        "best": best,
        "pareto": fronts,
        "samples": samples or [],
    }


def _front(rows: list[dict], cost: str, higher_is_better: bool) -> list[str]:
    points = {row["variant"]: (row.get(cost), row.get("quality")) for row in rows}
    return pareto_front(points, higher_is_better=higher_is_better)


def table_cells(results: dict[str, Any]) -> tuple[list[str], list[list[str]], set[tuple]]:
    """(headers, rows of text, {(row, column) of each best cell}) shared by every renderer."""
    ranked = criteria(results["quality_metric"], results["quality_higher_is_better"])
    first = "variant" if results.get("variants") else "method"
    headers = [first, "status", "examples", *(c.label for c in ranked)]
    cells, best = [], set()
    for index, row in enumerate(results["methods"]):
        if row["status"] != "finished":
            error = f"failed: {row.get('error', '')}"
            cells.append([row["variant"], error] + [""] * (len(ranked) + 1))
            continue
        status = "done earlier" if row.get("skipped") else "done"
        if row.get("runs") is not None:  # a variant's runs over the seeds
            status += f" ({len(row['seeds'])}/{len(row['runs'])} seeds)"
        seen = _number(row.get("examples_seen"), "{:,}")
        cells.append([row["variant"], status, seen, *(c.show(row) for c in ranked)])
        for column, criterion in enumerate(ranked, start=3):
            if row["variant"] in results["best"].get(criterion.key, []):
                best.add((index, column))
    return headers, cells, best


def markdown(results: dict[str, Any]) -> str:
    """results.md: the table (best cells in bold), the Pareto fronts, the errors."""
    headers, cells, best = table_cells(results)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for index, row in enumerate(cells):
        shown = [f"**{text}**" if (index, col) in best else text for col, text in enumerate(row)]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in shown) + " |")
    over_seeds = " (on the means over the seeds)" if results.get("seeds") else ""
    lines += ["", f"Best in bold{over_seeds}. " + budget_text(results["budget"]), ""]
    lines += [f"- {sentence}" for sentence in pareto_sentences(results)]
    if results.get("variants"):
        lines += ["", "Variants:", ""]
        lines += [f"- {sentence}" for sentence in variant_sentences(results)]
    lines += markdown_section(results)
    lines += seeds_markdown(results)
    return "# Comparison\n\n" + "\n".join(lines) + "\n"


def variant_sentences(results: dict[str, Any]) -> list[str]:
    """What each named variant changes in the base config, one line each."""
    lines = []
    for name, overrides in results.get("variants", {}).items():
        changes = ", ".join(f"{key}={_plain(value)}" for key, value in flat_items(overrides))
        lines.append(f"{name}: {changes or 'the base config as it is'}")
    return lines


def _plain(value: Any) -> str:
    """A value as YAML would write it inline (false, 0.002, [q_proj, v_proj]); a list of
    named sections (data.tasks) as its names, with the flags that set a task's role."""
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, dict) and "name" in v for v in value)
    ):
        flags = ("held_out", "replay")
        return (
            "["
            + ", ".join(
                v["name"] + "".join(f" ({flag})" for flag in flags if v.get(flag)) for v in value
            )
            + "]"
        )
    text = yaml.dump(value, Dumper=_NoAliases, default_flow_style=True, width=1_000)
    return text.removesuffix("...\n").strip()


class _NoAliases(yaml.SafeDumper):
    """Writes a value repeated in the config (a YAML anchor) in full each time."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def pareto_sentences(results: dict[str, Any]) -> list[str]:
    quality = results["quality_metric"]
    names = {"quality_vs_trainable_params": "trainable parameters",
             "quality_vs_train_seconds": "training time"}  # fmt: skip
    return [
        f"Pareto-optimal for {quality} vs {names[key]}: {', '.join(front) or 'none'}"
        for key, front in results["pareto"].items()
    ]


def budget_text(budget: dict[str, Any]) -> str:
    parts = []
    if budget.get("examples"):
        parts.append(f"{budget['examples']:,} training examples")
    if budget.get("tokens"):
        parts.append(f"{budget['tokens']:,} training tokens")
    if budget.get("steps"):
        parts.append(f"{budget['steps']} optimizer steps")
    if budget.get("seconds"):
        parts.append(f"{budget['seconds']:g} s of training")
    text = " or ".join(parts) or "the base config's steps"
    return f"Budget per run: {text}" + (", whichever comes first." if len(parts) > 1 else ".")


def human_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _number(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _show_quality(row: dict[str, Any]) -> str:
    """before → after; over seeds: before → mean ± sd [95 % interval]."""
    text = f"{_number(row.get('quality_before'), '{:.4g}')} → {_number(row['quality'], '{:.4g}')}"
    if row.get("quality_sd") is not None:
        text += f" ± {row['quality_sd']:.2g}"
    interval = row.get("quality_interval")
    if interval:
        text += f" [{interval['low']:.4g}, {interval['high']:.4g}]"
    return text


def _show_trainable(row: dict[str, Any]) -> str:
    return f"{row['trainable_params']:,} ({row['trainable_percent']:.3g}%)"


def _show_forgetting(row: dict[str, Any]) -> str:
    if row.get("forgetting_percent") is None:
        return _number(row.get("probe_perplexity"), "{:.4g}")
    return f"{row['forgetting_percent']:+.1f}% ({row['probe_perplexity']:.4g})"
