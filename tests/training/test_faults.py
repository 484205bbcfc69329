"""Faults during training: damaged checkpoints, a NaN loss, a full disk. Each is detected,
named in one line, and leaves what was written before intact."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from tunelab import train
from tunelab.cli import app
from tunelab.training import loop
from tunelab.training.checkpoint import (
    STATE,
    TENSORS,
    DamagedCheckpoint,
    checkpoints,
    verify_checkpoint,
)
from tunelab.training.progress import SilentReporter

ROOT = Path(__file__).resolve().parents[2]


def config(root: Path, **train_values) -> dict:
    return {
        "model": {"name": "random:llama"},
        "data": {"train": "builtin:reverse", "builtin_size": 32, "max_length": 64},
        "method": {"name": "lora"},
        "train": {"max_steps": 5, "batch_size": 4, "lr": 3e-3, "log_every": 1,
                  "save_every": 1, "progress": False, **train_values},
        "eval": {"before": False, "metrics": ["loss"]},
        "output_dir": str(root / "run"),
    }  # fmt: skip


class Killed(Exception):
    pass


def killed_at(step_to_die: int):
    def on_step(step):
        if step == step_to_die:
            raise Killed

    return on_step


class Messages(SilentReporter):
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


def adapter_tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_no_pickle_where_user_files_are_read():
    for path in (ROOT / "tunelab").rglob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text(encoding="utf-8")):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert "import pickle" not in path.read_text(encoding="utf-8"), path


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_checkpoint_is_named_and_resume_falls_back(tmp_path, damage):
    whole = train(config(tmp_path / "whole"))
    cfg = config(tmp_path / "killed")
    with pytest.raises(Killed):
        train(cfg, on_step=killed_at(4))
    newest, previous = checkpoints(tmp_path / "killed" / "run" / "checkpoints")[:2]
    assert (newest.name, previous.name) == ("step-0000004", "step-0000003")
    torch.load(newest / STATE, weights_only=True)  # plain tensors and values: no pickle
    target = newest / (TENSORS if damage != "delete" else STATE)
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(bytes(data[: len(data) // 3]))
    else:
        target.unlink()
    with pytest.raises(DamagedCheckpoint, match=re.escape(str(target))):
        verify_checkpoint(newest)
    messages = Messages()
    resumed = train(cfg, resume=True, reporter=messages)
    damaged = [line for line in messages.lines if "damaged" in line]
    assert len(damaged) == 1 and str(target) in damaged[0] and "\n" not in damaged[0]
    assert "resuming from step-0000003" in messages.lines
    assert_same(adapter_tensors(whole.run_dir), adapter_tensors(resumed.run_dir))


def test_nan_loss_stops_at_that_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = loop.token_loss_sum
    calls = {"n": 0}

    def poisoned(model, batch):  # the 3rd optimizer step's loss is NaN (1 micro-batch a step)
        total, count = real(model, batch)
        calls["n"] += 1
        return (total * float("nan") if calls["n"] == 3 else total), count

    monkeypatch.setattr(loop, "token_loss_sum", poisoned)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path)))
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("error: step 3: the loss is nan")
    assert "train.lr" in line and "fp32" in line and "step-0000002" in line
    run = tmp_path / "run"
    assert not (run / "adapter").exists() and not (run / "summary.json").exists()
    kept = checkpoints(run / "checkpoints")
    assert kept[0].name == "step-0000002"
    verify_checkpoint(kept[0])
    assert all(torch.isfinite(t).all() for t in load_file(str(kept[0] / TENSORS)).values())


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs where the tests run as root and may mount; otherwise None (the test then
    simulates ENOSPC at the write call)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield None
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write zeros into `folder` until its file system is full."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def test_disk_full_while_saving_is_one_line_and_resume_finishes(tmp_path, small_disk, monkeypatch):
    root = small_disk or tmp_path / "disk"
    cfg = config(root)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    real_save = loop.save_checkpoint
    filler = []

    def save_then_fill(directory, step, *args):
        if step == 3:  # the disk fills up just before the third checkpoint is written
            if small_disk is not None:
                filler.append(fill(small_disk))
            else:
                import tunelab.training.checkpoint as checkpoint

                def no_space(*args, **kwargs):
                    raise OSError(28, "No space left on device")

                monkeypatch.setattr(checkpoint, "save_file", no_space)
        return real_save(directory, step, *args)

    monkeypatch.setattr(loop, "save_checkpoint", save_then_fill)
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2, (result.output, result.exception)
    line = result.stderr.strip()
    assert "\n" not in line and "no space left on device" in line, line
    run = root / "run"
    assert [p.name for p in checkpoints(run / "checkpoints")] == ["step-0000002", "step-0000001"]
    for kept in checkpoints(run / "checkpoints"):
        verify_checkpoint(kept)
    assert not list((run / "checkpoints").glob(".step-*"))  # the partial write is gone
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 5
    for leftover in filler:
        leftover.unlink()
    monkeypatch.undo()
    result = CliRunner().invoke(app, ["train", str(path), "--resume"])
    assert result.exit_code == 0, result.output
    assert (run / "summary.json").is_file()
