"""Kill a training run with SIGKILL at random moments, resume it, and repeat (run by
test_kill.py as its own process: `python kill_harness.py SPEC.json RESULT.json`; SPEC names,
per method, the config, the number of kills and the seed of the kill moments).

The harness imports tunelab once, then forks one child per attempt, so each attempt is a real
process that dies by `kill -9` (no cleanup, no exception handlers) without paying the import
again. First an uninterrupted child trains `reference/` and is timed (T). Then experiments:
each trains `exp-N/` with `--resume` semantics; every attempt is killed after a random delay in
(0, T] unless it finishes first, and the experiment ends when an attempt finishes. Kills land
anywhere: loading, the base evaluation, a step, a checkpoint write, saving the adapter, the
final evaluation, the summary. The test compares every experiment's weights with the reference.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path


def run_child(config: dict, output_dir: Path) -> int:
    """Fork a child that trains (resuming) into `output_dir` and exits; return its pid."""
    from tunelab.training.loop import train
    from tunelab.training.progress import SilentReporter

    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            train({**config, "output_dir": str(output_dir)}, resume=True, reporter=SilentReporter())
        except BaseException as error:  # noqa: BLE001 - reported through the exit code
            print(f"child failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            code = 1
        os._exit(code)
    return pid


def wait(pid: int, timeout: float) -> int | None:
    """The child's exit status if it ends within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    return None


def where(run: Path) -> str:
    """What the run directory held when the kill landed (for the report)."""
    steps = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    parts = [f"checkpoint {steps[-1]}" if steps else "no checkpoint"]
    parts += [name for name in ("before.json", "adapter", "summary.json") if (run / name).exists()]
    return ", ".join(parts)


def kill_and_resume(root: Path, config: dict, kills_wanted: int, seed: int) -> dict:
    """Reference run, then experiments until `kills_wanted` kills have landed."""
    rng = random.Random(seed)
    started = time.monotonic()
    if wait(run_child(config, root / "reference"), 300) != 0:
        raise SystemExit(f"{root}: the uninterrupted reference run failed")
    duration = time.monotonic() - started
    kills, experiments = [], []
    while len(kills) < kills_wanted:
        run = root / f"exp-{len(experiments)}"
        experiments.append(str(run))
        while True:
            delay = rng.uniform(0.02, duration)
            pid = run_child(config, run)
            status = wait(pid, delay)
            if status is not None:  # finished (or failed) before the kill
                if status != 0:
                    raise SystemExit(f"{run}: an attempt failed with status {status}")
                break
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            kills.append({"run": str(run), "delay": round(delay, 3), "at": where(run)})
    return {"reference": str(root / "reference"), "experiments": experiments,
            "kills": kills, "reference_seconds": round(duration, 2)}  # fmt: skip


def main(spec_path: str, result_path: str) -> None:
    import torch

    import tunelab.training.loop  # noqa: F401 - import everything once, before forking

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    result = {
        name: kill_and_resume(Path(spec["root"]) / name, run["config"], run["kills"], run["seed"])
        for name, run in spec["runs"].items()
    }
    Path(result_path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
