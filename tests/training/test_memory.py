"""Peak memory over the training window only: what was allocated and freed before the window
opened does not count; units of the fallback (bytes on macOS, KiB on Linux)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import tunelab.training.memory as memory
from tunelab import train
from tunelab.training.memory import (
    PeakMemory,
    high_water_mark_mb,
    max_rss_mb,
    reset_high_water_mark,
)

BIG = 600 * 2**20  # bytes of a tensor allocated and freed before the window


def spike(size: int = BIG) -> float:
    """Raise the process's high-water mark by about `size` bytes, then give them back (a
    large tensor is its own mapping, returned to the system when freed); return the mark
    (MiB). Resetting the mark resets `ru_maxrss` too (Linux keeps one counter)."""
    block = torch.ones(size // 4)
    mark = high_water_mark_mb()
    del block
    return mark


needs_reset = pytest.mark.skipif(
    not reset_high_water_mark(), reason="no writable /proc/self/clear_refs (not Linux)"
)


@needs_reset
def test_the_window_excludes_what_came_before_and_includes_what_happens_in_it():
    mark = spike()
    window = PeakMemory.start("cpu")
    quiet = window.peak_mb()
    assert quiet < mark - 300  # the spike before the window does not count
    block = torch.ones(BIG // 4)  # (100 Mi floats) touched, so resident
    busy = window.peak_mb()
    del block
    assert busy > quiet + 300  # a spike inside the window does
    assert window.exact


@needs_reset
def test_a_run_reports_its_training_steps_peak_not_the_process_lifetime(tmp_path):
    mark = spike()  # as a model load or an earlier search trial would
    run = train({
        "model": {"name": "random:llama"},
        "data": {"train": "builtin:add", "builtin_size": 16, "max_length": 48},
        "train": {"max_steps": 2, "batch_size": 4, "progress": False},
        "eval": {"metrics": ["loss"], "before": False},
        "output_dir": str(tmp_path / "run"),
    })  # fmt: skip
    peak = run.summary["peak_memory_mb"]
    assert 0 < peak < mark - 300


@pytest.mark.parametrize(("platform", "raw"), [("darwin", 3 * 2**30), ("linux", 3 * 2**20)])
def test_ru_maxrss_units(monkeypatch, platform, raw):
    fake = SimpleNamespace(ru_maxrss=raw)
    monkeypatch.setattr(memory.resource, "getrusage", lambda who: fake)
    assert max_rss_mb(platform) == 3 * 1024  # 3 GiB either way


def test_without_a_resettable_mark_the_fallback_says_whether_it_is_exact(monkeypatch):
    """Where the high-water mark cannot be reset (macOS), a lifetime peak that grew inside the
    window is the window's peak; one that did not is only an upper bound."""
    rss = SimpleNamespace(ru_maxrss=1000 * 1024)  # KiB, as on Linux
    monkeypatch.setattr(memory.resource, "getrusage", lambda who: rss)
    monkeypatch.setattr(memory.sys, "platform", "linux")
    monkeypatch.setattr(memory, "reset_high_water_mark", lambda: False)
    window = PeakMemory.start("cpu")
    assert window.peak_mb() == 1000 and not window.exact  # an upper bound
    rss.ru_maxrss = 1500 * 1024
    assert window.peak_mb() == 1500 and window.exact  # grew inside the window
