"""Checkpoints for resuming a killed run: only what trains, plus optimizer, schedule, RNG and
step. Resuming rebuilds the run exactly (same data order by seed and epoch, same RNG), so a
resumed run ends with the same weights as an uninterrupted one.

A checkpoint is a folder `step-NNNNNNN/` written whole or not at all (`atomic_dir`):

  trainable.safetensors   the trainable tensors by name
  state.pt                optimizer, schedule, RNG, step: tensors and plain Python values only,
                          read with `torch.load(weights_only=True)` (no pickle of user files)
  manifest.json           sha256 and size of both files, written last

The two newest are kept. On resume each is verified against its manifest first; a damaged
or truncated one is named in a one-line message and the previous one is used instead.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.errors import TunelabError
from tunelab.io import atomic_dir, atomic_write_json
from tunelab.methods.base import load_trained_tensors, trainable_state
from tunelab.training.fsdp import is_sharded, restore

TENSORS = "trainable.safetensors"
STATE = "state.pt"
MANIFEST = "manifest.json"
KEEP = 2  # checkpoints kept: the newest and one to fall back to


class DamagedCheckpoint(TunelabError):
    """A checkpoint whose files do not match their manifest (truncated, corrupt, incomplete)."""


def _rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from, as tensors and plain values (loadable weights_only)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def save_checkpoint(
    directory: Path,
    step: int,
    model: nn.Module,
    optimizer,
    scheduler,
    extra: dict[str, Any],
    gathered: tuple[dict, dict] | None = None,
) -> Path:
    """Write `directory/step-N` atomically; keep the newest `KEEP` checkpoints. `gathered`:
    the trainable tensors and optimizer state of a sharded (FSDP) model, whole, as
    `tunelab.training.fsdp.gather_checkpoint` collected them; else the model's own are saved."""
    trained, optimizer_state = gathered or (trainable_state(model), optimizer.state_dict())
    target = directory / f"step-{step:07d}"
    for stale in directory.glob(".step-*"):  # left by a writer killed mid-checkpoint
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(target) as tmp:
        tensors = {k: v.contiguous().clone() for k, v in trained.items()}
        save_file(tensors, str(tmp / TENSORS))
        state = {
            "step": step,
            "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
            "extra": extra,
            "sharded": gathered is not None,  # FSDP's state is keyed by name, not position
        }
        torch.save(state, tmp / STATE)
        files = {name: {"sha256": _digest(tmp / name), "bytes": (tmp / name).stat().st_size}
                 for name in (TENSORS, STATE)}  # fmt: skip
        atomic_write_json(tmp / MANIFEST, {"step": step, "files": files})
    for old in checkpoints(directory)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoint folders, newest first."""
    return sorted((p for p in directory.glob("step-*") if p.is_dir()), reverse=True)


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint that verifies, or None."""
    for path in checkpoints(directory):
        try:
            verify_checkpoint(path)
        except DamagedCheckpoint:
            continue
        return path
    return None


def verify_checkpoint(path: Path) -> None:
    """Raise `DamagedCheckpoint` (naming the file) unless every file matches the manifest."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        expected = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DamagedCheckpoint(f"{path / MANIFEST}: missing or unreadable") from None
    for name, facts in expected.items():
        file = path / name
        if not file.is_file():
            raise DamagedCheckpoint(f"{file}: missing")
        if file.stat().st_size != facts["bytes"]:
            raise DamagedCheckpoint(
                f"{file}: truncated ({file.stat().st_size} of {facts['bytes']} bytes)"
            )
        if _digest(file) != facts["sha256"]:
            raise DamagedCheckpoint(f"{file}: checksum mismatch (corrupt)")


def load_checkpoint(path: Path, model: nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Verify, then restore trained tensors, optimizer, schedule and RNG; return the state."""
    verify_checkpoint(path)
    state = torch.load(path / STATE, weights_only=True)
    if state.get("sharded", False) != is_sharded(model):
        how = "with FSDP" if state.get("sharded") else "without FSDP"
        raise TunelabError(f"{path}: written by a run {how}; resume it launched the same way")
    if is_sharded(model):  # FSDP: whole tensors and state by name, each process keeps a shard
        restore(model, optimizer, load_file(str(path / TENSORS)), state["optimizer"])
    else:
        load_trained_tensors(model, load_file(str(path / TENSORS)))
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return state


def resume_latest(
    directory: Path, model: nn.Module, optimizer, scheduler, say: Callable[[str], None]
) -> int:
    """Load the newest checkpoint that verifies and return its step (0: none). Each damaged one
    is named in one line through `say` before falling back to the one before it."""
    for path in checkpoints(directory):
        try:
            verify_checkpoint(path)
        except DamagedCheckpoint as damage:
            say(f"checkpoint damaged, falling back to the previous one: {damage}")
            continue
        step = load_checkpoint(path, model, optimizer, scheduler)["step"]
        say(f"resuming from {path.name}")
        return step
    return 0
