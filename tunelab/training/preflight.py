"""Checks that run before any work: a setting that cannot be honoured, or a run directory that
would be destroyed, is a one-line error before the model is evaluated or a file is written.

`check_settings` needs only the config; `check_output` the run directory; `check_method` the
loaded base model (e.g. a `target_modules` name that no module of this model has).
"""

from __future__ import annotations

import torch

from tunelab.config import RunConfig
from tunelab.errors import ConfigError
from tunelab.run import RunFiles


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


def check_method(method, model, cfg: RunConfig) -> None:
    """The method's settings against the loaded base model (module names exist, ...)."""
    method.check(model, cfg.method)
