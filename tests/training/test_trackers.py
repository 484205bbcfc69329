"""`train.report_to: [tensorboard, mlflow]`: the run's config, metric curves and summary are
read back from the TensorBoard event files and the MLflow store with their own readers."""

from __future__ import annotations

import json

import pytest

from tunelab import train
from tunelab.errors import TunelabError
from tunelab.run import RunFiles


def config(tmp_path, **train_fields) -> dict:
    return {
        "model": {"name": "random:llama"},
        "data": {"train": "builtin:reverse", "builtin_size": 16, "max_length": 32},
        "method": {"name": "lora"},
        "train": {"max_steps": 4, "log_every": 1, "batch_size": 4, "progress": False,
                  **train_fields},
        "eval": {"before": True, "metrics": ["loss"]},
        "output_dir": str(tmp_path / "run"),
    }  # fmt: skip


def test_tensorboard_and_mlflow_get_config_curves_and_summary(tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(config(tmp_path, report_to=["tensorboard", "mlflow"]))
    files = RunFiles(result.run_dir)
    records = [json.loads(line) for line in files.metrics.read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    assert len(losses) >= 4

    events = EventAccumulator(str(files.root / "tensorboard")).Reload()
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == [step for step, _ in losses]
    assert [e.value for e in logged] == pytest.approx([loss for _, loss in losses])
    after = events.Scalars("summary/after.loss")[0].value
    assert after == pytest.approx(result.summary["after"]["loss"])
    assert events.Scalars("summary/before.loss")[0].value == pytest.approx(
        result.summary["before"]["loss"])  # fmt: skip
    assert "config/text_summary" in events.Tags()["tensors"]

    client = MlflowClient(tracking_uri=f"sqlite:///{files.root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tunelab")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert [step for step, _ in history] == [step for step, _ in losses]
    assert [loss for _, loss in history] == pytest.approx([loss for _, loss in losses])
    assert run.data.params["method.name"] == "lora" and run.data.params["train.max_steps"] == "4"
    assert run.data.metrics["summary.trainable_params"] == result.summary["trainable_params"]
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "summary.json"}


def test_unknown_tracker_is_refused_before_training(tmp_path):
    with pytest.raises(TunelabError, match="report_to"):
        train(config(tmp_path, report_to=["wandb"]))
    assert not (tmp_path / "run").exists()


def test_a_tracker_that_is_not_installed_fails_before_any_work(tmp_path, monkeypatch):
    from tunelab.training import preflight

    real = preflight.importlib.util.find_spec
    monkeypatch.setattr(
        preflight.importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name)
    )
    with pytest.raises(TunelabError, match=r"train.report_to: mlflow is not installed"):
        train(config(tmp_path, report_to=["mlflow"]))
    assert not (tmp_path / "run").exists()
