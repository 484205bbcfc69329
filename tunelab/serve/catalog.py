"""What a server may serve: finished runs found under the `--runs` folders, their model cards
for `/v1/models` and the web page, the reports beside them, and the vLLM command for them.

A finished run is a folder with summary.json, config.yaml and adapter/ (what `train` writes
last), wherever it sits: a plain run, `compare`'s OUTPUT/runs/<method>/, `search`'s
OUTPUT/trials/trial-NNNN/. A run is named by its folder; folders of the same name in different
places get their path relative to the root instead (`demo/runs/lora`).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.run import RunFiles, content_hash  # noqa: F401 (moved to run.py; re-exported)
from tunelab.run_config import load_config

VLLM_METHODS = {"lora"}  # what vLLM's multi-LoRA serving loads as is (PEFT LoRA, no bias)


def is_finished_run(folder: Path) -> bool:
    files = RunFiles(folder)
    return files.summary.is_file() and files.config.is_file() and files.adapter.is_dir()


def discover(roots: list[Path]) -> dict[str, Path]:
    """name -> run folder for every finished run under `roots` (sorted by path)."""
    found: list[tuple[Path, Path]] = []
    for root in roots:
        if not root.is_dir():
            raise TunelabError(f"--runs {root}: not a directory")
        found += [(root, s.parent) for s in sorted(root.rglob("summary.json"))]
    found = [(root, run) for root, run in found if is_finished_run(run)]
    counts: dict[str, int] = {}
    for _, run in found:
        counts[run.name] = counts.get(run.name, 0) + 1
    names = {}
    for root, run in found:
        unique = counts[run.name] == 1 or run == root
        names[run.name if unique else run.relative_to(root.parent).as_posix()] = run
    return names


def within(path: Path, roots: list[Path]) -> bool:
    """True if `path` (links and `..` resolved) lies inside one of `roots`."""
    resolved = path.resolve()
    return any(resolved.is_relative_to(root.resolve()) for root in roots)


def reports(roots: list[Path]) -> list[Path]:
    """Every comparison or search report.html under the roots."""
    return [path for root in roots for path in sorted(root.rglob("report.html"))]


def run_card(run_dir: Path) -> dict:
    """What the web page shows of a run: its data and method settings, the summary (params,
    time, before/after metrics) and the training loss curve [[step, loss], ...]."""
    files = RunFiles(run_dir)
    cfg = load_config(files.config)
    curve = []
    if files.metrics.is_file():
        for line in files.metrics.read_text(encoding="utf-8").splitlines():
            record = json.loads(line) if line.strip() else {}
            if "loss" in record and "step" in record:
                curve.append([record["step"], record["loss"]])
    data = {
        "train": cfg.data.train,
        "eval": cfg.data.eval,
        "template": cfg.data.template,
        "system_prompt": cfg.data.system_prompt,
    }
    return {
        "summary": files.read_summary(),
        "data": data,
        "method_config": cfg.method.model_dump(mode="json"),
        "loss_curve": curve,
    }


def summary_fields(run_dir: Path) -> dict:
    """The few summary facts `/v1/models` carries."""
    summary = RunFiles(run_dir).read_summary()
    return {
        "method": summary.get("method"),
        "trainable_params": summary.get("trainable_params"),
        "total_params": summary.get("total_params"),
    }


def vllm_command(base_dir: str, runs: dict[str, Path], methods: dict[str, str]) -> tuple[str, list]:
    """(`vllm serve` command for the LoRA runs, [(name, method)] of runs vLLM cannot carry)."""
    carried = {name: run for name, run in runs.items() if _vllm_can_load(run, methods[name])}
    skipped = [(name, methods[name]) for name in runs if name not in carried]
    pairs = [f"{name}={RunFiles(run).adapter}" for name, run in carried.items()]
    modules = " ".join(shlex.quote(pair) for pair in pairs)
    ranks = [_lora_rank(run) for run in carried.values()]
    command = f"vllm serve {shlex.quote(base_dir)}"
    if carried:
        command += f" --enable-lora --max-lora-rank {max(ranks)} --lora-modules {modules}"
    return command, skipped


def _vllm_can_load(run: Path, method: str) -> bool:
    if method not in VLLM_METHODS:
        return False
    config = json.loads((RunFiles(run).adapter / "adapter_config.json").read_text())
    return config.get("bias", "none") == "none" and not config.get("use_dora")


def _lora_rank(run: Path) -> int:
    config = json.loads((RunFiles(run).adapter / "adapter_config.json").read_text())
    rank = max([config.get("r", 8), *config.get("rank_pattern", {}).values()])
    return max(8, 1 << (rank - 1).bit_length())  # vLLM takes 8, 16, 32, ... only
