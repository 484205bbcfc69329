"""Terminal tables (rich) for generated-text reports, decoding search and tokenizer figures:
built by the library from plain dicts, printed by the CLI."""

from __future__ import annotations

from rich.table import Table


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def generation_table(report: dict) -> Table:
    """Generated text beyond the scores: each sacrebleu metric with its 95 % interval before and
    after, the paired difference with its p-value, then repetition, diversity and length."""
    sides = [tag for tag in ("before", "after") if tag in report]
    table = Table(title=f"generated text · {report['examples']} examples · bootstrap 95 % CI")
    for column in ["metric", *sides, "after - before", "p"]:
        table.add_column(column, justify="left" if column == "metric" else "right")
    paired = report.get("paired", {})
    for name in report["signatures"]:
        cells = [_interval(report[tag][name]) for tag in sides]
        test = paired.get(name)
        delta = f"{test['delta']:+.2f} [{test['low']:+.2f}, {test['high']:+.2f}]" if test else "-"
        table.add_row(name, *cells, delta, f"{test['p_value']:.3f}" if test else "-")
    for name in ("seq-rep-4", "distinct-2", "length_ratio"):
        table.add_row(name, *(_fmt(report[tag][name]) for tag in sides), "", "")
    return table


def _interval(value: dict) -> str:
    return f"{value['score']:.2f} [{value['low']:.2f}, {value['high']:.2f}]"


def decoding_table(record: dict) -> Table:
    """One row per decoding setting tried on dev; the winner marked."""
    metric = record["metric"]
    table = Table(title=f"decoding on dev · {record['examples']} examples · {record['data']}")
    for column in ["settings", metric, "seq-rep-4", "distinct-2", "length_ratio", ""]:
        table.add_column(column, justify="left" if column == "settings" else "right")
    for candidate in record["candidates"]:
        settings = candidate["settings"]
        changed = {k: v for k, v in settings.items() if k in _SHOWN or not _plain(v)}
        chosen = "winner" if candidate == record["winner"] else ""
        table.add_row(
            " ".join(f"{k}={v}" for k, v in changed.items()),
            *(_fmt(candidate[name]) for name in (metric, "seq-rep-4", "distinct-2")),
            _fmt(candidate["length_ratio"]),
            chosen,
        )
    return table


_SHOWN = ("repetition_guard", "stop_at_newline")


def _plain(value) -> bool:
    """False, 0 or 1.0: a decoding field left at its plain value (True is not plain)."""
    return (type(value), value) in {(bool, False), (int, 0), (float, 1.0)}


TOKENIZER_COLUMNS = {
    "fertility": "tokens/word", "chars_per_token": "chars/token", "premium": "premium vs en",
    "byte_fallback_rate": "byte %", "unknown_rate": "unk %",
    "over_max_length": "> max_length %", "epoch_tokens": "tokens/epoch",
}  # fmt: skip


def tokenizer_table(report: dict) -> Table:
    first = next(iter(report["models"].values()))
    title = f"{report['data']} · {first['examples']} rows · {first['words']} words"
    table = Table(title=f"{title} · max_length {first['max_length']}")
    table.add_column("model")
    for label in TOKENIZER_COLUMNS.values():
        table.add_column(label, justify="right")
    for name, figures in report["models"].items():
        table.add_row(name, *(_fmt(figures.get(key)) for key in TOKENIZER_COLUMNS))
    return table
