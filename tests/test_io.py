"""Atomic writes reach the disk in order: every file is fsync'ed before the rename that puts it
in place, and the parent folder after the rename (so a power cut cannot leave a renamed but
empty file); where a folder cannot be opened (Windows) the writes still happen."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from torch import nn

from tunelab.io import atomic_dir, atomic_write_json, fsync_dir
from tunelab.training.checkpoint import latest_checkpoint, save_checkpoint


@pytest.fixture
def events(monkeypatch) -> list[tuple]:
    """What reached os.fsync and os.replace, in order: ("fsync", inode, is_folder) and
    ("replace", source inode, destination path)."""
    seen: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        facts = os.fstat(descriptor)
        seen.append(("fsync", facts.st_ino, stat.S_ISDIR(facts.st_mode)))
        return real_fsync(descriptor)

    def replace(source, destination):
        seen.append(("replace", os.stat(source).st_ino, Path(destination)))
        return real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return seen


def position(events: list[tuple], event: tuple) -> int:
    assert event in events, f"{event} never happened: {events}"
    return events.index(event)


def after(events: list[tuple], event: tuple, index: int) -> bool:
    return event in events[index + 1 :]


def test_a_json_file_is_flushed_before_its_rename_and_the_folder_after(tmp_path, events):
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"steps": 3})
    assert target.read_text() == '{\n  "steps": 3\n}\n'
    inode = target.stat().st_ino  # the temporary file, renamed
    renamed = position(events, ("replace", inode, target))
    assert position(events, ("fsync", inode, False)) < renamed
    assert after(events, ("fsync", tmp_path.stat().st_ino, True), renamed)


def test_a_folder_is_flushed_whole_before_its_rename_and_replaces_the_old_one(tmp_path, events):
    target = tmp_path / "adapter"
    with atomic_dir(target) as folder:
        (folder / "old.txt").write_text("first")
    with atomic_dir(target) as folder:
        (folder / "sub").mkdir()
        (folder / "weights.bin").write_bytes(b"\0" * 4096)
        (folder / "sub" / "config.json").write_text("{}")
    assert sorted(p.name for p in target.rglob("*")) == ["config.json", "sub", "weights.bin"]
    renamed = position(events, ("replace", target.stat().st_ino, target))
    for path in (target / "weights.bin", target / "sub" / "config.json"):
        assert position(events, ("fsync", path.stat().st_ino, False)) < renamed
    for folder in (target / "sub", target):
        assert position(events, ("fsync", folder.stat().st_ino, True)) < renamed
    assert after(events, ("fsync", tmp_path.stat().st_ino, True), renamed)
    assert not list(tmp_path.glob(".adapter*"))  # no temporary or old folder left


def test_a_checkpoint_reaches_the_disk_before_it_is_named(tmp_path, events):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    path = save_checkpoint(tmp_path, 4, model, optimizer, scheduler, {})
    renamed = position(events, ("replace", path.stat().st_ino, path))
    for file in path.iterdir():  # tensors, state, manifest
        assert position(events, ("fsync", file.stat().st_ino, False)) < renamed
    assert latest_checkpoint(tmp_path) == path


def test_where_folders_cannot_be_opened_writes_still_happen(tmp_path, monkeypatch):
    def refuse(path, flags, *args):
        if os.path.isdir(path):
            raise PermissionError(13, "folders cannot be opened here", str(path))
        return real_open(path, flags, *args)

    real_open = os.open
    monkeypatch.setattr(os, "open", refuse)
    fsync_dir(tmp_path)  # nothing to flush, no error
    atomic_write_json(tmp_path / "a.json", [1])
    with atomic_dir(tmp_path / "run") as folder:
        (folder / "b.txt").write_text("b")
    assert (tmp_path / "a.json").read_text() == "[\n  1\n]\n"
    assert (tmp_path / "run" / "b.txt").read_text() == "b"
