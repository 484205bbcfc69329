"""Checkpoints for resuming a killed run: only what trains, plus optimizer, schedule, RNG and
step. Resuming rebuilds the run exactly (same data order by seed and epoch, same RNG), so a
resumed run ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.io import atomic_dir
from tunelab.methods.base import load_trained_tensors, trainable_state

TENSORS = "trainable.safetensors"
STATE = "state.pt"


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: Path, step: int, model: nn.Module, optimizer, scheduler, extra: dict[str, Any]
) -> Path:
    """Write `directory/step-N` atomically; keep only the newest checkpoint."""
    target = directory / f"step-{step:07d}"
    with atomic_dir(target) as tmp:
        tensors = {k: v.contiguous().clone() for k, v in trainable_state(model).items()}
        save_file(tensors, str(tmp / TENSORS))
        torch.save(
            {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
                "extra": extra,
            },
            tmp / STATE,
        )
    for old in directory.glob("step-*"):
        if old != target and old.is_dir():
            _remove_tree(old)
    return target


def latest_checkpoint(directory: Path) -> Path | None:
    candidates = sorted(p for p in directory.glob("step-*") if (p / STATE).exists())
    return candidates[-1] if candidates else None


def load_checkpoint(path: Path, model: nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Restore trained tensors, optimizer, schedule and RNG; return the saved state."""
    load_trained_tensors(model, load_file(str(path / TENSORS)))
    state = torch.load(path / STATE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return state


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
