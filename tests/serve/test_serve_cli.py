"""`tunelab serve` on the command line: what it serves from --runs, what it refuses (runs of
another base), --print-vllm, and a real start → request → Ctrl-C in a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.serve.adapters import AdapterSet
from tunelab.serve.engine import Scheduler
from tunelab.serve.prepack import available
from tunelab.serve.server import free_port, plan_runs

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


def test_print_vllm_carries_lora_runs_and_names_the_rest(method_runs):
    root = method_runs["lora_a"].parent
    result = runner.invoke(app, ["serve", "--runs", str(root), "--print-vllm"])
    assert result.exit_code == 0, result.output
    command, *notes = result.stdout.strip().splitlines()
    assert command.startswith("vllm serve random:llama --enable-lora --max-lora-rank 8")
    assert f"lora_a={method_runs['lora_a'] / 'adapter'}" in command
    assert f"lora_b={method_runs['lora_b'] / 'adapter'}" in command
    not_carried = {line.split()[3] for line in notes}
    assert not_carried == set(method_runs) - {"lora_a", "lora_b"}  # DoRA included
    assert all("vLLM serves LoRA adapters only" in line for line in notes)


def test_runs_of_another_base_are_refused_with_one_line(method_runs, tmp_path, make_run):
    for number, name in enumerate(["lora_a", "prompt"]):
        shutil.copytree(method_runs[name], tmp_path / "study" / "trials" / f"trial-000{number}")
    other = make_run(tmp_path / "elsewhere", "seed1", "lora", 1e-2, seed=1)
    shutil.copytree(other, tmp_path / "study" / "seed1")
    plan = plan_runs([tmp_path / "study"], {}, "random:llama")
    assert list(plan.runs) == ["trial-0000", "trial-0001"]  # the base most runs share
    assert len(plan.skipped) == 1 and plan.skipped[0].startswith("seed1 (")
    trials = [f"--adapter=t{n}={tmp_path / 'study' / 'trials' / f'trial-000{n}'}" for n in (0, 1)]
    result = runner.invoke(app, ["serve", *trials, "--adapter", f"mine={other}", "--print-vllm"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --adapter mine=") and "not on the served base" in (
        result.stderr)  # fmt: skip
    missing = runner.invoke(app, ["serve", "--runs", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "not a directory" in missing.stderr


def test_no_prepack_reaches_the_engine(method_runs, monkeypatch):
    """`--prepack` (the default) / `--no-prepack` and `--measure` / `--no-measure` go to the
    server, which hands them to the engine: its mixed view holds packed weights or none."""
    given = {}
    monkeypatch.setattr("tunelab.serve.server.run_server",
                        lambda plan, roots, **options: given.update(options))  # fmt: skip
    root = str(method_runs["lora_a"].parent)
    assert runner.invoke(app, ["serve", "--runs", root]).exit_code == 0
    assert given["prepack"] is True
    assert runner.invoke(app, ["serve", "--runs", root, "--no-prepack"]).exit_code == 0
    assert given["prepack"] is False
    assert given["measure"] is True  # the default: products measured at start
    assert runner.invoke(app, ["serve", "--runs", root, "--no-measure"]).exit_code == 0
    assert given["measure"] is False
    served = AdapterSet.from_runs({"lora_a": method_runs["lora_a"]})
    for prepack in (False, True):  # (unmeasured: a measurement drops the packs it finds slower)
        scheduler = Scheduler(served, prepack=prepack, measure=False)
        try:
            packed = [m.packed for m in scheduler.mixer.model.modules() if hasattr(m, "packed")]
            assert any(p is not None for p in packed) == (prepack and available())
        finally:
            scheduler.close()


def test_serve_starts_answers_and_stops_on_ctrl_c(method_runs):
    port = free_port()
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli", "serve", "--runs", str(method_runs["prompt"]),
         "--adapter", f"lora={method_runs['lora_a']}", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240  # a loaded machine starts python + torch slowly
        while time.monotonic() < deadline:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert [card["id"] for card in models["data"]] == ["base", "prompt", "lora"]
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert f"http://localhost:{port}" in out and "models: base, prompt, lora" in out
    assert "curl" in out and "from openai import OpenAI" in out
    assert "Traceback" not in err
