"""Data parallelism through `accelerate launch --multi_gpu --num_processes 2` (two CPU processes
on gloo): one representative of every method family trains to exactly what one process with
the same global batch (`grad_accum` 2) trains, both processes end with identical weights, one
process writes, and a two-process run resumes from its checkpoint.

The tolerance is zero, and that is expected, not lucky: each process runs the very micro-batch
one process runs (same shapes, one thread each), its loss is scaled by 2/n where one process
scales by 1/n (exact in binary floating point), and DDP's average of two gradients, (a + b) / 2
after the doubling, is exactly a + b. A difference of one rounding step would show a change in
what is computed, as it did when the loss could not see the model inside DDP.

One launch trains every run one after another (tests/training/multiprocess_harness.py) so the
imports are paid once; the one-process reference runs in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.utils import DistributedType
from safetensors.torch import load_file
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import ConfigError
from tunelab.models.tiny import random_model
from tunelab.run_config import RunConfig
from tunelab.training.distributed import WAIT, check_distributed, make_accelerator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from multiprocess_harness import STEPS, config, run_jobs  # noqa: E402

FAMILIES = {  # one method per family
    "lora": "LoRA-like PEFT (lora, dora, ia3)",
    "prompt": "prompt learning (prompt, prefix, ptuning)",
    "adapter": "bottleneck adapters (Houlsby)",
    "bitfit": "bias terms",
    "full": "full fine-tuning",
    "ulmfit": "gradual unfreezing: the trainable set changes after the DDP wrap",
    "importance": "sparse updates under gradient-scored masks",
}
RESUMED = ("ulmfit", "importance")  # whose state is rebuilt on resume (unfreezing, masks)


def two_process_jobs(root: Path) -> list[dict]:
    jobs = [{"name": f"{m}-w2", "config": config(m, 2, root, f"{m}-w2")} for m in FAMILIES]
    for method in RESUMED:  # stopped after the step-2 checkpoint, then resumed
        name = f"{method}-resumed"
        cfg = config(method, 2, root, name, save_every=2)
        jobs += [{"name": name, "config": cfg, "stop_after": 2},
                 {"name": name, "config": cfg, "resume": True}]  # fmt: skip
    name = "ulmfit-accum-w2"  # gradient accumulation within each process too
    return [*jobs, {"name": name, "config": config("ulmfit", 2, root, name, accum=2)}]


def one_process_jobs(root: Path) -> list[dict]:
    jobs = [{"name": f"{m}-w1", "config": config(m, 1, root, f"{m}-w1")} for m in FAMILIES]
    name = "ulmfit-accum-w1"
    return [*jobs, {"name": name, "config": config("ulmfit", 1, root, name, accum=2)}]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multiprocess")
    spec = root / "spec.json"
    spec.write_text(json.dumps(two_process_jobs(root)))
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(HERE / "multiprocess_harness.py"), str(spec), str(root)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    threads = torch.get_num_threads()
    try:  # the reference: one process, same global batch
        run_jobs(one_process_jobs(root), root)
    finally:
        torch.set_num_threads(threads)
    return root


def tensors(root: Path, name: str, rank: int = 0) -> dict[str, torch.Tensor]:
    return load_file(str(root / f"{name}.rank{rank}.safetensors"))


def assert_identical(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    different = [name for name in left if not torch.equal(left[name], right[name])]
    assert not different, f"{len(different)} tensors differ, first {different[0]}"


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").open())]


@pytest.mark.parametrize("method", list(FAMILIES))
def test_two_processes_train_as_one_process_with_the_same_global_batch(runs, method):
    two = tensors(runs, f"{method}-w2")
    assert_identical(two, tensors(runs, f"{method}-w2", rank=1))  # replicas, masks included
    assert_identical(two, tensors(runs, f"{method}-w1"))
    curve = losses(runs / f"{method}-w2")
    assert [step for step, _ in curve] == list(range(1, STEPS + 1))  # one writer, not two
    assert curve == losses(runs / f"{method}-w1")  # the same loss curve, exactly
    assert len({loss for _, loss in curve}) == STEPS  # it trained
    summary = json.loads((runs / f"{method}-w2" / "summary.json").read_text())
    reference = json.loads((runs / f"{method}-w1" / "summary.json").read_text())
    assert summary["examples_seen"] == reference["examples_seen"]  # both processes' examples
    assert summary["after"]["loss"] == reference["after"]["loss"]


def test_accumulating_within_each_process_matches_up_to_rounding(runs):
    """Two processes with `grad_accum` 2 against one with 4: the same four micro-batches per
    step, but their gradients are summed in another order (each process adds its two, then
    the processes' sums meet), so float32 rounding differs by about one unit in the last
    place per step; Adam divides by the gradient's own scale, which lets such a difference in
    a near-zero entry grow to a small share of the step. Bound: 0.1 % of how far training
    moved the weights; the loss curve within 1e-5 relative."""
    base = dict(random_model("llama")[0].named_parameters())
    one, two = tensors(runs, "ulmfit-accum-w1"), tensors(runs, "ulmfit-accum-w2")
    assert_identical(two, tensors(runs, "ulmfit-accum-w2", rank=1))
    moved = max(float((one[n] - base[n]).abs().max()) for n in one)
    apart = max(float((one[n] - two[n]).abs().max()) for n in one)
    assert moved > 1e-3 and apart <= 1e-3 * moved
    for (step, loss), (other_step, other) in zip(
        losses(runs / "ulmfit-accum-w1"), losses(runs / "ulmfit-accum-w2"), strict=True
    ):
        assert step == other_step and abs(loss - other) <= 1e-5 * abs(loss)


def test_layers_unfrozen_after_the_wrap_train_on_both_processes(runs):
    """ULMFiT's bottom block unfreezes at step 2, after DDP wrapped the model: it must get
    averaged gradients (else each process would step its own way) and move."""
    base = dict(random_model("llama")[0].named_parameters())
    for rank in (0, 1):
        trained = tensors(runs, "ulmfit-w2", rank)
        block = [n for n in trained if n.startswith("model.layers.0.")]
        assert block and all(not torch.equal(trained[n], base[n]) for n in block)


def test_importance_masks_are_the_same_on_both_processes(runs):
    masks = {n: t for n, t in tensors(runs, "importance-w2").items() if "importance_indices" in n}
    assert masks
    other = tensors(runs, "importance-w2", rank=1)
    assert all(torch.equal(mask, other[name]) for name, mask in masks.items())


@pytest.mark.parametrize("method", RESUMED)
def test_a_two_process_run_resumes_from_its_checkpoint(runs, method):
    resumed = tensors(runs, f"{method}-resumed")
    assert_identical(resumed, tensors(runs, f"{method}-resumed", rank=1))
    assert_identical(resumed, tensors(runs, f"{method}-w2"))  # as if never stopped
    assert losses(runs / f"{method}-resumed") == losses(runs / f"{method}-w2")


def test_untested_launch_modes_are_refused_before_any_work(tmp_path, monkeypatch):
    """What `accelerate launch --use_deepspeed` tells its processes: one line, exit 2, nothing
    written (FSDP: tests/training/test_fsdp.py)."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config("full", 1, tmp_path, "run")))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DeepSpeed is not supported" in lines[0]
    assert not (tmp_path / "run").exists()
    for kind in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM, DistributedType.XLA):
        with pytest.raises(ConfigError, match=f"{kind.value} is not supported"):
            check_distributed(SimpleNamespace(distributed_type=kind))


def test_processes_wait_for_the_main_process_evaluation_longer_than_torch_would():
    """torch's gloo process group gives up after 30 minutes; the main process's evaluation
    with generation on a CPU can take longer while the others wait."""
    cfg = RunConfig.model_validate({"train": {"device": "cpu"}})
    assert make_accelerator(cfg).init_handler.timeout == WAIT >= timedelta(hours=12)
