"""Checks that run before any work: a setting that cannot be honoured, or a run directory that
would be destroyed, is a one-line error before the model is evaluated or a file is written.

`check_settings` needs only the config; `check_output` the run directory; `check_method` the
loaded base model (e.g. a `target_modules` name that no module of this model has).
"""

from __future__ import annotations

import importlib.util

import torch

from tunelab.errors import ConfigError
from tunelab.run import RunFiles
from tunelab.run_config import RunConfig, load_config

TRACKER_MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def check_settings(cfg: RunConfig) -> None:
    """Refuse settings this machine cannot honour instead of silently falling back."""
    has_gpu = torch.cuda.is_available()
    if cfg.train.device == "cuda" and not has_gpu:
        raise ConfigError(
            "train.device: cuda, but torch sees no GPU here; use train.device=auto or cpu"
        )
    on_cpu = cfg.train.device == "cpu" or not has_gpu
    if cfg.train.precision == "fp16" and on_cpu:
        raise ConfigError("train.precision: fp16 needs a GPU; on a CPU use fp32 or bf16")
    for tracker in cfg.train.report_to:  # found now, not after a night of training
        if importlib.util.find_spec(TRACKER_MODULES[tracker]) is None:
            raise ConfigError(
                f"train.report_to: {tracker} is not installed; pip install 'tunelab[trackers]'"
            )


def check_output(files: RunFiles, *, resume: bool, overwrite: bool) -> None:
    """A finished run (or one with checkpoints) is never replaced unless asked."""
    if overwrite or resume:
        return
    if files.summary.exists() or files.adapter.exists():
        raise ConfigError(
            f"output_dir {files.root} holds a finished run; pass --overwrite to replace it "
            "or choose another output_dir"
        )
    if files.checkpoints.exists() and any(files.checkpoints.iterdir()):
        raise ConfigError(
            f"output_dir {files.root} holds an unfinished run with checkpoints; pass --resume "
            "to continue it or --overwrite to start again"
        )


HARMLESS = {("train", "progress"), ("train", "num_threads")}  # may change between resumes


def check_resume(files: RunFiles, cfg: RunConfig) -> None:
    """`--resume` continues the run in `files` only under the config it started with: a changed
    setting would silently mix two runs (or be ignored, if the run had finished). Without a
    summary or a checkpoint there is nothing to continue, so nothing to mix."""
    has_state = files.summary.exists() or any(files.checkpoints.glob("step-*"))
    if not files.config.exists() or not has_state:
        return
    changed = changed_keys(load_config(files.config).to_dict(), cfg.to_dict())
    if changed:
        raise ConfigError(
            f"{changed[0]}: differs from the run in {files.root} ({files.config}); --resume "
            "continues a run only under its own config; pass --overwrite to start again"
        )


def changed_keys(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ (section by section), except the harmless ones."""
    changed = []
    for section, values in current.items():
        before = saved.get(section)
        if isinstance(values, dict) and isinstance(before, dict):
            changed += [f"{section}.{key}" for key, value in values.items()
                        if (section, key) not in HARMLESS and before.get(key) != value]  # fmt: skip
        elif values != before:
            changed.append(section)
    return changed


def check_method(method, model, cfg: RunConfig) -> None:
    """The method's settings against the loaded base model (module names exist, ...)."""
    method.check(model, cfg.method)
