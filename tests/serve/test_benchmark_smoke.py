"""benchmarks/serve.py end to end on two tiny runs: both servers start, every workload runs on
each in every round (the order alternating), and the ratio lines are printed. Timings are not
checked: they mean nothing on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SIDE = re.compile(r"^(tunelab|reference) (one|distinct) round (\d) (\{.*\})$")
RATIO = re.compile(r"^(one|distinct): tunelab/reference output tokens/s = \d+\.\d\dx; ")


def load_benchmark():
    spec = importlib.util.spec_from_file_location("serve_bench", ROOT / "benchmarks" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_servers_run_every_workload_in_alternating_rounds(
    tmp_path, make_run, capsys, monkeypatch
):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as when run as a script
    runs = tmp_path / "runs"
    make_run(runs, "lora", "lora", 3e-2)
    make_run(runs, "ia3", "ia3", 3e-2)
    threads = torch.get_num_threads()  # merged_overhead sets one thread: leave it as it was
    try:
        load_benchmark().main(["--runs", str(runs), "--clients", "2", "--seconds", "1",
                               "--max-tokens", "4", "--rounds", "2", "--repeats", "1",
                               "--workloads", "one,distinct"])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    sides = [SIDE.match(line) for line in lines if SIDE.match(line)]
    order = [(m[3], m[2], m[1]) for m in sides]
    assert order == [
        ("1", "one", "tunelab"), ("1", "one", "reference"),
        ("1", "distinct", "tunelab"), ("1", "distinct", "reference"),
        ("2", "one", "reference"), ("2", "one", "tunelab"),
        ("2", "distinct", "reference"), ("2", "distinct", "tunelab"),
    ]  # fmt: skip
    for match in sides:
        figures = json.loads(match[4])
        assert figures["tokens"] > 0 and figures["requests"] >= 2 and figures["wall"] >= 1
        assert figures["cpu_s"] > 0 and figures["clients_cpu_s"] >= 0
        assert 0 <= figures["stolen_share"] <= 1
    measured = [line for line in lines if line.startswith("tunelab products (")]
    assert [line.split()[2] for line in measured] == ["(layers,", "(head,"]
    engine = [line for line in lines if line.startswith("  engine:")]
    assert len(engine) == 4 and all("decoding forwards" in line for line in engine)
    assert [RATIO.match(line)[1] for line in lines if RATIO.match(line)] == ["one", "distinct"]
    lora = [line for line in lines if line.startswith("LoRA per token, CPU ms (1 thread): as ")]
    assert len(lora) == 1 and "over merged in the same loop" in lora[0] and "PEFT" in lora[0]


def children(pid: int) -> set[int]:
    """The live child processes of `pid` (Linux's /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def test_a_terminated_benchmark_stops_both_servers(tmp_path, make_run):
    """SIGTERM (a job killed by its scheduler, `timeout`) must not leave the two servers
    running: the benchmark leaves through the `finally` that terminates them."""
    runs = tmp_path / "runs"
    make_run(runs, "lora", "lora", 3e-2)
    command = [sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--runs", str(runs),
               "--clients", "1", "--seconds", "600", "--max-tokens", "4"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(children(process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        servers = children(process.pid)
        assert len(servers) == 2  # both started (the second perhaps still loading)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 128 + signal.SIGTERM
    finally:
        process.kill()
    for pid in servers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
