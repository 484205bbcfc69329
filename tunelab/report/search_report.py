"""The search report: one self-contained HTML page (PNG charts inline) about an Optuna study.

Charts come from `optuna.visualization.matplotlib` — optimisation history, intermediate eval
loss (shows what was pruned), parameter importances (fANOVA; needs two completed trials),
parallel coordinates, slices and, for two or three objectives, the Pareto front. A chart that
cannot be drawn yet (too few trials) becomes a one-line note instead of an error.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunelab.report.html import charts, heading, image, page, paragraph, table


def _png(axes) -> bytes:
    """Render the figure holding `axes` (an Axes or an array of them) and close it."""
    import matplotlib.pyplot as plt

    first = axes.flat[0] if hasattr(axes, "flat") else axes
    figure = first.get_figure()
    figure.set_size_inches(max(figure.get_figwidth(), 7.5), max(figure.get_figheight(), 4.2))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _chart(caption: str, draw: Callable[[], object]) -> str:
    import matplotlib

    try:  # Optuna's plots call plt.style.use: rc_context keeps that from leaking out
        with warnings.catch_warnings(), matplotlib.rc_context():
            warnings.simplefilter("ignore")  # Optuna marks these plots experimental
            return image(_png(draw()), caption)
    except Exception as error:  # too few trials, no parameters, one-valued parameters...
        return paragraph(f"{caption}: not drawn ({error})", note=True)


def _figures(study: optuna.Study, names: list[str]) -> list[str]:
    plots = optuna.visualization.matplotlib
    multi = len(study.directions) > 1
    first = (lambda t: t.values[0]) if multi else None
    figures = [
        _chart(
            f"optimisation history: {name}",
            lambda i=i, name=name: plots.plot_optimization_history(
                study, target=(lambda t: t.values[i]) if multi else None, target_name=name
            ),
        )
        for i, name in enumerate(names)
    ]
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        figures.append(
            _chart(
                "eval loss during training (negated when maximising); pruned trials stop early",
                lambda: plots.plot_intermediate_values(study),
            )
        )
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) >= 2:
        figures.append(
            _chart(
                f"parameter importances for {names[0]}",
                lambda: plots.plot_param_importances(study, target=first, target_name=names[0]),
            )
        )
    else:
        figures.append(paragraph("parameter importances need two completed trials", note=True))
    figures.append(
        _chart(
            f"parallel coordinates ({names[0]})",
            lambda: plots.plot_parallel_coordinate(study, target=first, target_name=names[0]),
        )
    )
    figures.append(
        _chart(
            f"slices ({names[0]})",
            lambda: plots.plot_slice(study, target=first, target_name=names[0]),
        )
    )
    if multi and len(names) <= 3:
        figures.append(
            _chart("Pareto front", lambda: plots.plot_pareto_front(study, target_names=names))
        )
    return figures


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _trials_table(study: optuna.Study, names: list[str], best: list[FrozenTrial]) -> str:
    trials = study.get_trials(deepcopy=False)
    keys = list(dict.fromkeys(k for t in trials for k in t.user_attrs.get("config", {})))
    headers = ["trial", "state", *names, *keys, "seconds", "error"]
    best_numbers = {t.number for t in best}
    rows, highlighted, failed = [], set(), set()
    for index, trial in enumerate(trials):
        values = trial.values if trial.state == TrialState.COMPLETE else [None] * len(names)
        config = trial.user_attrs.get("config", {})
        seconds = trial.duration.total_seconds() if trial.duration else None
        cells = [*(_fmt(v) for v in values), *(_fmt(config.get(k)) for k in keys)]
        error = trial.user_attrs.get("error", "")
        rows.append([str(trial.number), trial.state.name.lower(), *cells, _fmt(seconds), error])
        if trial.number in best_numbers:
            highlighted.update((index, 2 + i) for i in range(len(names)))
        if trial.state == TrialState.FAIL:
            failed.add(index)
    return table(headers, rows, best=highlighted, failed_rows=failed)


def search_report_html(study: optuna.Study, names: list[str], best: list[FrozenTrial]) -> str:
    """The whole page for `study`; `names` label the objectives, `best` are highlighted."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    directions = [d.name.lower() for d in study.directions]
    goal = ", ".join(f"{d} {n}" for n, d in zip(names, directions, strict=False))
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no trials"
    parts = [paragraph(f"Objective: {goal}. Trials: {summary}.")]
    if best:
        label = "Pareto front" if len(directions) > 1 else "Best trial"
        parts.append(paragraph(f"{label}: " + ", ".join(f"trial {t.number}" for t in best)))
    parts += [heading("Charts"), charts(_figures(study, names))]
    parts += [heading("Trials"), _trials_table(study, names, best)]
    return page(f"Hyperparameter search: {study.study_name}", parts)
