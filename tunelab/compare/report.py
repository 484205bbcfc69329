"""report.html for a comparison: the table with each criterion's winner highlighted, the
Pareto-optimal variants named, what each variant changes, four charts embedded as PNG (loss
curves of every variant, quality vs trainable parameters on a log scale, quality vs training
time, peak memory), and a few eval prompts with every variant's output side by side; with
`seeds:`, the table across seeds and which variants' intervals separate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.compare.results import budget_text, pareto_sentences, table_cells, variant_sentences
from tunelab.compare.seeds import seed_table, separation_sentences
from tunelab.compare.seeds import table_notes as seed_notes
from tunelab.compare.tasks import pair_sentences, table_notes, task_table
from tunelab.io import read_jsonl
from tunelab.report import html, plots

if TYPE_CHECKING:
    from rich.table import Table


def loss_curves(results: dict[str, Any], x: str = "step") -> dict[str, list[tuple[float, float]]]:
    """{variant: [(x, training loss)]} from each run's metrics.jsonl, x the step or the
    examples seen by then; for a step logged twice (a resumed run) the last record counts."""
    curves = {}
    for row in results["methods"]:
        records = read_jsonl(Path(row["run_dir"]) / "metrics.jsonl")
        by_step = {r["step"]: (r.get(x), r["loss"]) for r in records if "step" in r and "loss" in r}
        curves[row["variant"]] = sorted(p for p in by_step.values() if p[0] is not None)
    return curves


def loss_axis(results: dict[str, Any]) -> tuple[str, str]:
    """(metrics.jsonl field, label) for the loss chart's x axis: examples seen under an
    example or token budget (where runs take different numbers of steps), else steps."""
    budget = results["budget"]
    if budget.get("examples") or budget.get("tokens"):
        return "examples_seen", "training examples seen"
    return "step", "optimizer step"


def chart_figures(results: dict[str, Any]) -> list[str]:
    """The four charts as embedded figures."""
    quality = results["quality_metric"]
    direction = "higher" if results["quality_higher_is_better"] else "lower"
    axis = f"{quality} ({direction} is better)"
    done = [row for row in results["methods"] if row["status"] == "finished"]
    scored = [row for row in done if row.get("quality") is not None]
    fronts = results["pareto"]
    by_params = {r["variant"]: (r["trainable_params"], r["quality"]) for r in scored}
    by_time = {r["variant"]: (r["train_seconds"], r["quality"]) for r in scored}
    memory = {r["variant"]: r["peak_memory_mb"] for r in done}
    least_memory = results["best"].get("peak_memory_mb", [])
    field, xlabel = loss_axis(results)
    which = "first seed of each variant" if results.get("seeds") else "every variant"
    return [
        html.image(
            plots.line_chart(loss_curves(results, field), title="Training loss",
                             xlabel=xlabel, ylabel="loss (per token)"),
            f"Training loss of the {which} (same data, seed and budget)",
        ),
        html.image(
            plots.scatter_chart(by_params, title=f"{quality} vs trainable parameters",
                                xlabel="trainable parameters (log scale)", ylabel=axis,
                                logx=True, highlight=fronts["quality_vs_trainable_params"],
                                highlight_label="Pareto front"),
            f"{quality} after training vs trainable parameters; red: Pareto-optimal",
        ),
        html.image(
            plots.scatter_chart(by_time, title=f"{quality} vs training time",
                                xlabel="training seconds", ylabel=axis,
                                highlight=fronts["quality_vs_train_seconds"],
                                highlight_label="Pareto front"),
            f"{quality} after training vs training time; red: Pareto-optimal",
        ),
        html.image(
            plots.bar_chart(memory, title="Peak memory", ylabel="MB", highlight=least_memory),
            "Peak memory per variant (its own process); red: least",
        ),
    ]  # fmt: skip


def render_report(results: dict[str, Any], title: str = "tunelab comparison") -> str:
    """The whole page as one self-contained HTML string."""
    headers, cells, best = table_cells(results)
    failed = {i for i, row in enumerate(results["methods"]) if row["status"] != "finished"}
    base = results.get("base") or {}
    notes = [
        budget_text(results["budget"]),
        f"Base model: {base.get('model', '?')}; probe perplexity "
        f"{base.get('probe_perplexity', float('nan')):.4g}, "
        f"{base.get('inference_ms_per_token', float('nan')):.2f} ms per generated token.",
        "Highlighted: the best value of each column. Forgetting: change of perplexity on a "
        "built-in general-English probe against the base model (lower is better).",
    ]
    noun = "variants" if results.get("variants") else "methods"
    variants = [html.heading("Variants"), html.bullet_list(variant_sentences(results))]
    return html.page(
        title,
        [
            html.paragraph(" ".join(notes), note=True),
            html.heading("Results"),
            html.table(headers, cells, best=best, failed_rows=failed),
            html.heading(f"Pareto-optimal {noun}"),
            html.bullet_list(pareto_sentences(results)),
            *(variants if results.get("variants") else []),
            *seed_blocks(results),
            *task_blocks(results),
            html.heading("Charts"),
            html.charts(chart_figures(results)),
            html.heading("Outputs side by side"),
            *sample_blocks(results),
        ],
    )


def seed_blocks(results: dict[str, Any]) -> list[str]:
    """The table across seeds and what separates (nothing without `seeds:`)."""
    headers, rows = seed_table(results)
    if not headers:
        return []
    return [html.heading("Across seeds"), html.paragraph(seed_notes(results), note=True),
            html.table(headers, rows), html.bullet_list(separation_sentences(results))]  # fmt: skip


def task_blocks(results: dict[str, Any]) -> list[str]:
    """The per-task table of multi-task runs (nothing for single-task comparisons)."""
    headers, rows = task_table(results)
    if not rows:
        return []
    pairs = pair_sentences(results)
    paired = [html.paragraph("Paired bootstrap between variants (same eval sentences):"),
              html.bullet_list(pairs)] if pairs else []  # fmt: skip
    return [html.heading("Per task"), html.paragraph(table_notes(), note=True),
            html.table(headers, rows), *paired]  # fmt: skip


def sample_blocks(results: dict[str, Any]) -> list[str]:
    """Each shown eval prompt with its reference, then the base model's and every variant's
    output (greedy, as scored), one row each."""
    if not results.get("samples"):
        return [html.paragraph("No generations: the eval metrics include no generative one.",
                               note=True)]  # fmt: skip
    blocks = [html.paragraph("The first eval prompts, greedy outputs as scored. "
                             "A dash: no output for that prompt.", note=True)]  # fmt: skip
    for number, sample in enumerate(results["samples"], start=1):
        rows = [("base model", _output(sample["base"]))]
        rows += [(name, _output(output)) for name, output in sample["outputs"].items()]
        blocks.append(html.text_block(f"Prompt {number}", sample["prompt"]))
        blocks.append(html.text_table(rows, caption=f"reference: {sample['reference']}"))
    return blocks


def _output(output: dict[str, Any] | None) -> str:
    if output is None:
        return "-"
    text = output["text"] if output["text"].strip() else "(empty output)"
    return text + ("" if output["same_prompt"] else "\n[prompted by its own template]")


def rich_table(results: dict[str, Any]) -> Table:
    """The same table for the terminal: best cells in bold green; a failed method's row says
    `failed` and its error goes in the caption, so one long message cannot stretch the rows."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    headers, cells, best = table_cells(results)
    errors = [f"{r['variant']}: {r.get('error')}" for r in results["methods"] if r.get("error")]
    notes = [*separation_sentences(results), *errors]  # across seeds: what separates
    table = Table(title=f"quality: {results['quality_metric']}", box=box.SIMPLE_HEAD,
                  caption="\n".join(notes) or None, caption_justify="left")  # fmt: skip
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index < 2 else "right")
    for index, row in enumerate(cells):
        row = [row[0], "failed" if row[1].startswith("failed") else row[1], *row[2:]]
        table.add_row(*(f"[bold green]{escape(text)}[/]" if (index, col) in best else escape(text)
                        for col, text in enumerate(row)))  # fmt: skip
    return table


def rich_task_table(results: dict[str, Any]) -> Table | None:
    """The per-task table for the terminal, or None for single-task comparisons."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    headers, rows = task_table(results)
    if not rows:
        return None
    table = Table(title="per task (base → after each variant)", box=box.SIMPLE_HEAD)
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index < 2 else "right")
    for row in rows:
        table.add_row(*(escape(text) for text in row))
    return table
