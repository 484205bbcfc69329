"""`tunelab.serve.threads.apart`: work in a thread that ends with it — its result or its
exception in the caller, and no OpenMP pool left behind in the process (a second pool halves the
engine worker's speed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from tunelab.serve.threads import apart


def test_apart_returns_the_result_from_another_thread_and_raises_its_error_here():
    caller = threading.get_ident()
    assert apart(lambda a, b=0: (a + b, threading.get_ident()), 2, b=3)[0] == 5
    assert apart(threading.get_ident) != caller

    def broken() -> None:
        raise ValueError("corrupt file")

    with pytest.raises(ValueError, match="corrupt file"):
        apart(broken)


@pytest.mark.skipif(
    not Path("/proc/self/task").is_dir() or "OpenMP" not in torch.__config__.parallel_info(),
    reason="counts the process's threads in /proc; the pool is OpenMP's (torch's CPU wheels)",
)
def test_parallel_work_done_apart_leaves_no_thread_pool_behind():
    """In a fresh process: torch's parallel work in the main thread leaves libgomp's helper
    threads alive for good (what the test detects); the same work done `apart` leaves none."""
    script = textwrap.dedent(
        """
        import os, time, torch
        from tunelab.serve.threads import apart
        torch.set_num_threads(2)
        def tasks():
            return len(os.listdir("/proc/self/task"))
        def work():
            return float(torch.ones(1 << 22).exp_().sum())  # split over both threads
        def settled(want):  # an ended thread leaves /proc a moment after join returns
            deadline = time.monotonic() + 10
            while tasks() != want and time.monotonic() < deadline:
                time.sleep(0.01)
            return tasks()
        start = tasks()
        apart(work)
        after_apart = settled(start)
        work()
        print(start, after_apart, tasks())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    start, after_apart, after_main = map(int, done.stdout.split())
    assert after_main > start, "parallel work in the main thread should keep a pool"
    assert after_apart == start
