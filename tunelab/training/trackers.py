"""The experiment trackers people already use: `train.report_to: [tensorboard, mlflow]`.

Each tracker is fed from the finished run directory — the contract between training and its
consumers — once the summary is written: the resolved config, every metrics.jsonl record as
a curve (train loss, learning rate, tokens/s, eval metrics, by step) and the summary (before
and after metrics, parameter counts, time). So the loop gains one call, and what a tracker
shows is exactly what the run directory holds.

  tensorboard   event files in RUN/tensorboard/ (`tensorboard --logdir runs/`)
  mlflow        a run in experiment `train.mlflow_experiment` at `train.mlflow_tracking_uri`
                (default: an SQLite store RUN/mlflow.db, artifacts in RUN/mlflow-artifacts/)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from tunelab.run import RunFiles


def report_run(files: RunFiles, cfg) -> None:
    """Log the finished run in `files` to every tracker `cfg.train.report_to` names."""
    for tracker in cfg.train.report_to:
        TRACKERS[tracker](files, cfg)


def curves(files: RunFiles) -> Iterator[tuple[int, str, float]]:
    """(step, name, value) for every number in metrics.jsonl but the step itself."""
    if not files.metrics.is_file():
        return
    for line in files.metrics.read_text(encoding="utf-8").splitlines():
        record = json.loads(line) if line.strip() else {}
        step = int(record.get("step", 0))
        for name, value in record.items():
            if name != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                yield step, name, float(value)


def summary_numbers(summary: dict) -> dict[str, float]:
    """Numeric summary fields, before/after metrics flattened to `before.loss` etc."""
    numbers = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            numbers |= {f"{key}.{k}": float(v) for k, v in value.items() if _number(v)}
        elif _number(value):
            numbers[key] = float(value)
    return numbers


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def flat_config(cfg) -> dict[str, str]:
    """The resolved config as dotted keys (MLflow parameters), values as text."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            flat[prefix] = str(value)[:500]

    walk("", cfg.model_dump(mode="json"))
    return flat


def to_tensorboard(files: RunFiles, cfg) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(files.root / "tensorboard"))
    try:
        writer.add_text("config", "```\n" + files.config.read_text(encoding="utf-8") + "\n```")
        for step, name, value in curves(files):
            writer.add_scalar(f"train/{name}", value, step)
        summary = files.read_summary()
        for name, value in summary_numbers(summary).items():
            writer.add_scalar(f"summary/{name}", value, summary.get("steps", 0))
    finally:
        writer.close()


def to_mlflow(files: RunFiles, cfg) -> None:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = cfg.train.mlflow_tracking_uri or f"sqlite:///{files.root.resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg.train.mlflow_experiment)
    if experiment is None:
        artifacts = None if cfg.train.mlflow_tracking_uri else _local(files, "mlflow-artifacts")
        experiment_id = client.create_experiment(cfg.train.mlflow_experiment, artifacts)
    else:
        experiment_id = experiment.experiment_id
    run_id = client.create_run(experiment_id, run_name=files.root.name).info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(name, value, now, step) for step, name, value in curves(files)]
    summary = files.read_summary()
    metrics += [Metric(f"summary.{name}", value, now, summary.get("steps", 0))
                for name, value in summary_numbers(summary).items()]  # fmt: skip
    params = [Param(key, value) for key, value in flat_config(cfg).items()]
    for start in range(0, max(len(metrics), len(params)), 100):  # MLflow's batch limits
        client.log_batch(run_id, metrics=metrics[start : start + 100],
                         params=params[start : start + 100])  # fmt: skip
    client.log_artifact(run_id, str(files.config))
    client.log_artifact(run_id, str(files.summary))
    client.set_terminated(run_id)


def _local(files: RunFiles, name: str) -> str:
    return (files.root.resolve() / name).as_uri()


TRACKERS = {"tensorboard": to_tensorboard, "mlflow": to_mlflow}
