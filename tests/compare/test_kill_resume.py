"""A comparison killed mid-way (SIGKILL: no chance to clean up) loses no finished work: the
rerun skips the variant that had finished and reruns the one that was training, whose worker
ended with the comparison instead of training on unseen. Both variants, one packed and one
padded, see the same number of examples under the example budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from tunelab.compare import load_compare_config
from tunelab.compare.runner import compare

from .conftest import tiny_base

ROOT = Path(__file__).resolve().parents[2]
BUDGET = 240  # examples: long enough (60 padded steps) for the kill to land mid-training


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def ended(process: psutil.Process) -> bool:
    """Exited (a zombie too: where nothing reaps orphans, an ended process stays one)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def logged_steps(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    return metrics.read_text().count("\n") if metrics.exists() else 0


def test_killed_comparison_resumes_without_losing_or_faking_work(tmp_path):
    base = tiny_base()
    base["method"] = {"name": "lora"}
    config = {"base": base, "variants": {"packed": {}, "padded": {"data.packing": False}},
              "budget_examples": BUDGET, "inference_tokens": 2,
              "output_dir": str(tmp_path / "out")}  # fmt: skip
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    runs = tmp_path / "out" / "runs"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "tunelab.cli", "compare", str(path)]
    log = (tmp_path / "output.txt").open("w")  # read it when this test fails
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: logged_steps(runs / "padded") >= 1, 300, "the second variant to train")
        forked = psutil.Process(process.pid).children()  # the fork server, resource tracker
        workers = [worker for parent in forked for worker in parent.children()]
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        process.kill()
        log.close()
    assert (runs / "packed" / "measurements.json").exists()  # finished before the kill
    assert workers, "no worker process was found training"
    wait_for(lambda: all(map(ended, workers)), 30, "the worker to end with the comparison")
    assert not (runs / "padded" / "summary.json").exists()  # no orphan finished it unseen
    stamp = (runs / "packed" / "summary.json").stat().st_mtime_ns

    results = compare(load_compare_config(path), label=str(path), progress=False)
    rows = {row["variant"]: row for row in results["methods"]}
    assert rows["packed"]["skipped"] and not rows["padded"]["skipped"]
    assert (runs / "packed" / "summary.json").stat().st_mtime_ns == stamp
    assert rows["padded"]["status"] == "finished" and rows["padded"]["steps"] == BUDGET // 4
    assert rows["packed"]["examples_seen"] == rows["padded"]["examples_seen"] == BUDGET
    assert rows["packed"]["packing"] and not rows["padded"]["packing"]
    assert rows["packed"]["steps"] > rows["padded"]["steps"]  # fewer examples per packed step
    steps = [json.loads(line)["step"] for line in (runs / "padded" / "metrics.jsonl").open()]
    assert steps == list(range(1, BUDGET // 4 + 1))  # a fresh run, not appended to the killed one
    (sample,) = results["samples"][:1]
    assert sample["base"] is not None and set(sample["outputs"]) == {"packed", "padded"}
    assert all(output is not None for output in sample["outputs"].values())
    assert "Outputs side by side" in (tmp_path / "out" / "report.html").read_text()
