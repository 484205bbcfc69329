"""Train several runs one after another in one process and keep each process's final weights
(test_multiprocess.py runs it under `accelerate launch --multi_gpu --num_processes 2` as
`python multiprocess_harness.py SPEC.json OUT_DIR`, and calls `run_jobs` for the one-process
reference; one start pays the imports once for every run).

SPEC is a list of jobs `{"name", "config", "stop_after"?, "resume"?}`. A job with `stop_after`
raises out of the loop after that optimizer step, on every process (as a kill there would end
it: the checkpoints stay, no adapter, no summary); a job with `resume` resumes its output
directory. After each job that finished, every process writes
`OUT_DIR/<name>.rank<R>.safetensors`: every parameter of the model and every buffer named
`importance_indices` (the sparse-update masks), as that process holds them when the loop ends
(under FSDP, where each process holds only shards, `<name>.rank<R>.shards.json` instead: the
elements of its shards and of the whole parameters; the run directory holds the whole model).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STEPS = 4
SMALL = {  # small method settings, so that a tiny model trains them in a few steps
    "prompt": {"num_virtual_tokens": 4},
    "ptuning": {"num_virtual_tokens": 4},
    "ulmfit": {"unfreeze_every": 1},  # groups unfreeze at steps 0, 1, 2 (3 groups)
    "importance": {"fraction": 0.05, "calibration_steps": 2},
}


def config(method: str, world: int, root: Path, name: str, accum: int = 1, **train) -> dict:
    """A run of `method` on `world` processes: `grad_accum` 2 in one process, 1 in each of
    two, so the same global batch (`accum` times that with `accum` > 1)."""
    return {
        "model": {"name": "random:llama"},
        "data": {"train": "builtin:reverse", "eval": "builtin:reverse", "builtin_size": 32,
                 "max_eval_examples": 2,
                 # prompt learning packs in one process only (training.plan): both sides
                 # unpacked, so one process and two see the same batches
                 "packing": method not in ("prompt", "ptuning", "prefix")},
        "method": {"name": method, **SMALL.get(method, {})},
        "train": {"max_steps": STEPS, "batch_size": 2, "grad_accum": accum * 2 // world, "lr": 1e-2,
                  "progress": False, "log_every": 1, "num_threads": 1, **train},
        "eval": {"metrics": ["loss"], "before": False},
        "output_dir": str(root / name),
    }  # fmt: skip


class Stop(Exception):
    """Raised from `on_step` to end a job mid-run."""


def run_jobs(jobs: list[dict], out: Path) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    import tunelab.training.loop as loop
    from tunelab.training.fsdp import is_sharded
    from tunelab.training.progress import SilentReporter

    held = {}  # what this process holds when its step loop returns

    def run_steps(state, *args, **kwargs):
        stats = original(state, *args, **kwargs)
        held["rank"] = state.accelerator.process_index
        if is_sharded(state.model):  # FSDP: each process holds shards; the run dir has all
            params = list(state.model.parameters())  # DTensors: numel() is the whole size
            held["shards"] = {"local": sum(p.to_local().numel() for p in params),
                              "whole": sum(p.numel() for p in params)}  # fmt: skip
            return stats
        model = state.accelerator.unwrap_model(state.model)
        tensors = {n: p.detach().clone() for n, p in model.named_parameters()}
        tensors |= {n: b.clone() for n, b in model.named_buffers()
                    if n.endswith("importance_indices")}  # fmt: skip
        held["tensors"] = tensors
        return stats

    original, loop.run_steps = loop.run_steps, run_steps
    try:
        for job in jobs:
            held.clear()
            stop_after = job.get("stop_after")

            def on_step(step, stop_after=stop_after):
                if stop_after is not None and step >= stop_after:
                    raise Stop

            try:
                loop.train(job["config"], resume=job.get("resume", False),
                           reporter=SilentReporter(), on_step=on_step)  # fmt: skip
            except Stop:
                if dist.is_initialized():
                    dist.barrier()  # the main process has written its checkpoint
                continue
            stem = Path(out) / f"{job['name']}.rank{held['rank']}"
            if "tensors" in held:
                save_file(held["tensors"], f"{stem}.safetensors")
            if "shards" in held:
                Path(f"{stem}.shards.json").write_text(json.dumps(held["shards"]))
    finally:
        loop.run_steps = original


if __name__ == "__main__":
    run_jobs(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
