"""Train several runs one after another in one process and keep each rank's final weights
(run by test_multiprocess.py, under `accelerate launch --num_processes 2` or alone:
`python multiprocess_harness.py SPEC.json OUT_DIR`).

SPEC is a list of jobs `{"name", "config", "stop_after"?, "resume"?}`. A job with `stop_after`
raises out of the loop after that optimizer step (a process dying there, on every rank); a job
with `resume` resumes its output directory. After each job that finished, every rank writes
`OUT_DIR/<name>.rank<R>.safetensors`: every parameter of the model and every buffer named
`importance_indices` (the sparse-update masks), as that rank holds them when the loop ends.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


class Stop(Exception):
    """Raised from `on_step` to end a job mid-run, as a kill would (no save, no summary)."""


def main(spec_path: str, out: str) -> None:
    from safetensors.torch import save_file

    import tunelab.training.loop as loop
    from tunelab.training.progress import SilentReporter

    finished = {}  # the state each rank holds when its step loop returns

    def run_steps(state, *args, **kwargs):
        stats = original(state, *args, **kwargs)
        model = state.accelerator.unwrap_model(state.model)
        tensors = {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}
        tensors |= {n: b.clone() for n, b in model.named_buffers()
                    if n.endswith("importance_indices")}  # fmt: skip
        finished["tensors"], finished["rank"] = tensors, state.accelerator.process_index
        return stats

    original, loop.run_steps = loop.run_steps, run_steps
    for job in json.loads(Path(spec_path).read_text()):
        finished.clear()
        stop_after = job.get("stop_after")

        def on_step(step, stop_after=stop_after):
            if stop_after is not None and step >= stop_after:
                raise Stop

        try:
            loop.train(job["config"], resume=job.get("resume", False),
                       reporter=SilentReporter(), on_step=on_step)  # fmt: skip
        except Stop:
            continue
        name = f"{job['name']}.rank{finished['rank']}.safetensors"
        save_file(finished["tensors"], str(Path(out) / name))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
