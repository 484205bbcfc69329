"""Peak memory of a window of work (the training steps), not of the process's whole life.

The process's lifetime high-water mark also holds loading and converting the model, the base
model's evaluation and, in a search, every earlier trial: it says little about what training
needs. `PeakMemory.start(device)` opens a window; `.peak_mb()` is the highest use since then.
The training loop and the benchmarks (benchmarks/sides.py) measure through this one helper.

- CUDA: the allocator's peak of allocated tensor memory, reset at the start.
- CPU on Linux: the resident set's high-water mark (`VmHWM` in /proc/self/status), reset at
  the start by writing 5 to /proc/self/clear_refs (Linux >= 4.0): exact for the window.
  (This also resets `ru_maxrss`: Linux keeps one counter for both.)
- Elsewhere (macOS, or where clear_refs cannot be written): `getrusage`'s `ru_maxrss`, which
  cannot be reset and is in bytes on macOS, KiB on Linux. When it grew during the window, the
  peak fell inside it and the value is exact; otherwise the window's peak is at most that
  value, which is reported (`exact` is then False).

Windows do not nest where the mark is reset (CUDA, Linux): opening one restarts every window
still open (a benchmark's window around `run_steps` then starts where the loop's own does).
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

MIB = 2**20
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class PeakMemory:
    """A window of peak-memory measurement on one device. `exact` is False where the peak can
    only be bounded from above (see the module docstring)."""

    device: torch.device
    baseline_mb: float = 0.0  # the lifetime high-water mark when the window opened (fallback)
    resettable: bool = True  # the CPU high-water mark was reset when the window opened
    exact: bool = True

    @classmethod
    def start(cls, device: torch.device | str = "cpu") -> PeakMemory:
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            return cls(device)
        if reset_high_water_mark():
            return cls(device)
        return cls(device, baseline_mb=max_rss_mb(), resettable=False)

    def peak_mb(self) -> float:
        """The highest memory use since `start`, in MiB."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / MIB
        if self.resettable:
            high = high_water_mark_mb()
            if high is not None:
                return high
        peak = max_rss_mb()
        self.exact = peak > self.baseline_mb  # grew inside the window: the peak is in it
        return peak


def reset_high_water_mark() -> bool:
    """Reset the resident set's high-water mark to the current RSS (Linux); False if not."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return high_water_mark_mb() is not None


def high_water_mark_mb() -> float | None:
    """`VmHWM` of /proc/self/status in MiB, or None where there is no such file."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def max_rss_mb(platform: str | None = None) -> float:
    """The process's lifetime peak RSS in MiB: `ru_maxrss` is bytes on macOS, KiB on Linux."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / MIB if (platform or sys.platform) == "darwin" else value / 1024
