"""Atomic writes: an artifact is either complete on disk or absent, never half-written.

Each is written under a temporary name in the same folder and renamed into place. Against a
killed process the rename is enough; against a power cut the data must reach the disk before
the rename does, and the rename itself must too: every file is fsync'ed before the rename
(a folder's files, and the folder, included) and the parent folder after it, where the
operating system allows a folder to be opened (not on Windows).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.errors import DiskFull

NEARLY_FULL_BYTES = 1 << 20  # less free space than this after a failed write: the disk is full


def disk_full(error: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of space. Libraries report it differently: an OSError
    (ENOSPC, EDQUOT), a message (safetensors), or a bare failure (torch.save) — so the free
    space of `folder` is checked too, while the partial file still holds it."""
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
        return True
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < NEARLY_FULL_BYTES


def _disk_full_error(path: Path) -> DiskFull:
    return DiskFull(
        f"{path}: no space left on device while writing it; nothing earlier was changed. "
        "Free some space and run again (training: --resume continues from the last checkpoint)"
    )


def fsync_file(path: Path) -> None:
    """Flush a written file's data to the disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (names created, renamed, removed) to the disk; nothing where a
    folder cannot be opened (Windows)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems refuse fsync on folders: nothing more to do there
        pass
    finally:
        os.close(descriptor)


def fsync_tree(root: Path) -> None:
    """Flush every file under `root`, then every folder, deepest first, `root` last."""
    folders = [root]
    for child in sorted(root.rglob("*")):
        if child.is_dir():
            folders.append(child)
        elif child.is_file():
            fsync_file(child)
    for folder in reversed(folders):
        fsync_dir(folder)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are ordinary files
        os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename itself
    except Exception as error:
        full = disk_full(error, path.parent)
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise _disk_full_error(path) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line (a log: a torn last line is tolerated by readers)."""
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    except OSError as error:
        if disk_full(error, Path(path).parent):
            raise _disk_full_error(Path(path)) from None
        raise


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSONL log, skipping a torn last line left by a killed writer."""
    records = []
    path = Path(path)
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path` whole, on error it vanishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes 0700; artifacts are ordinary folders
        for child in tmp.rglob("*"):
            child.chmod(0o755 if child.is_dir() else 0o644)
        fsync_tree(tmp)  # written by libraries (safetensors, torch.save) that do not flush
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            fsync_dir(path.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
            fsync_dir(path.parent)
    except DiskFull:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_full_error(path) from None
    except Exception as error:
        full = disk_full(error, path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise _disk_full_error(path) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
