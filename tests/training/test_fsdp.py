"""FSDP2 through accelerate (`accelerate launch --config_file examples/accelerate/fsdp2.yaml`:
two CPU processes on gloo, each decoder layer its own unit): every method (all eleven are in
`training.fsdp.SHARDABLE`) trains to what one process with the same global batch
(`grad_accum` 2) trains, each process holds half of every parameter, the main process alone
writes the whole trained model, the saved run loads with `load_run` and gives one process's
logits, and a two-process run resumes from its checkpoint as if never stopped. What is not
tested under FSDP is refused in one line before any work.

Tolerance: FSDP2 reduce-scatters flat padded buffers of gradients where one process adds its
two micro-batches' gradients in place, so the sums may round differently (one unit in the last
place of float32); with Adam's division by the gradient's own scale such a difference in a
near-zero entry can grow to a small share of a step. Bounds: the loss curves within 1e-5
relative (measured: 1.2e-7 at most), weights within 0.1 % of their largest magnitude
(measured: 0.018 % at most), importance's indices equal, logits within 1e-4.

One launch trains every run (tests/training/multiprocess_harness.py); the one-process reference
runs in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import ConfigError, TunelabError
from tunelab.methods import METHODS
from tunelab.models.tiny import random_model
from tunelab.run import load_run
from tunelab.training.checkpoint import load_checkpoint, save_checkpoint
from tunelab.training.fsdp import SHARDABLE, check_fsdp

HERE = Path(__file__).resolve().parent
FSDP2 = HERE.parents[1] / "examples" / "accelerate" / "fsdp2.yaml"  # what the README offers
sys.path.insert(0, str(HERE))
from multiprocess_harness import STEPS, run_jobs  # noqa: E402
from multiprocess_harness import config as harness_config  # noqa: E402


def config(method: str, world: int, root: Path, name: str, **train) -> dict:
    """The data-parallel tests' run, with a periodic eval at step 2 (a sharded forward)."""
    return harness_config(method, world, root, name, eval_every=2, **train)


def launch(spec: Path, root: Path) -> subprocess.CompletedProcess:
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--config_file", str(FSDP2),
               str(HERE / "multiprocess_harness.py"), str(spec), str(root)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fsdp")
    jobs = [{"name": f"{m}-w2", "config": config(m, 2, root, f"{m}-w2")} for m in SHARDABLE]
    for method in ("lora", "full"):  # stopped after the step-2 checkpoint, then resumed
        resumed = config(method, 2, root, f"{method}-resumed", save_every=2)
        jobs += [{"name": f"{method}-resumed", "config": resumed, "stop_after": 2},
                 {"name": f"{method}-resumed", "config": resumed, "resume": True}]  # fmt: skip
    spec = root / "spec.json"
    spec.write_text(json.dumps(jobs))
    done = launch(spec, root)
    assert done.returncode == 0, done.stderr[-3000:]
    threads = torch.get_num_threads()
    try:  # the reference: one process, same global batch
        run_jobs([{"name": f"{m}-w1", "config": config(m, 1, root, f"{m}-w1")} for m in SHARDABLE],
                 root)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return root


def saved(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor the run saved in adapter/ (full: the transformers weights file)."""
    tensors = {}
    for path in sorted((run / "adapter").glob("*.safetensors")):
        tensors |= {f"{path.name}:{k}": v for k, v in load_file(str(path)).items()}
    return tensors


def losses(run: Path, key: str = "loss") -> list[tuple[int, float]]:
    records = map(json.loads, (run / "metrics.jsonl").open())
    return [(r["step"], r[key]) for r in records if key in r]


def assert_close_curves(one: list, two: list) -> None:
    assert [step for step, _ in two] == list(range(1, STEPS + 1))  # one writer, not two
    for (step, loss), (other_step, other) in zip(one, two, strict=True):
        assert step == other_step and abs(loss - other) <= 1e-5 * abs(loss)
    assert len({loss for _, loss in two}) == STEPS  # it trained


@pytest.mark.parametrize("method", list(SHARDABLE))
def test_two_sharded_processes_train_as_one_process(runs, method):
    two, one = runs / f"{method}-w2", runs / f"{method}-w1"
    assert_close_curves(losses(one), losses(two))
    [(step, eval_loss)], [(other_step, other)] = losses(one, "eval_loss"), losses(two, "eval_loss")
    assert step == other_step == 2 and abs(eval_loss - other) <= 1e-5 * eval_loss
    a, b = saved(one), saved(two)
    assert a.keys() == b.keys() and a
    weights = [k for k in a if a[k].is_floating_point()]
    assert all(torch.equal(a[k], b[k]) for k in a if k not in weights)  # importance's indices
    scale = max(float(a[k].abs().max()) for k in weights)
    apart = max(float((a[k] - b[k]).abs().max()) for k in weights)
    assert apart <= 1e-3 * scale, f"{apart} apart"
    summary = json.loads((two / "summary.json").read_text())
    reference = json.loads((one / "summary.json").read_text())
    assert summary["examples_seen"] == reference["examples_seen"]
    assert (
        abs(summary["after"]["loss"] - reference["after"]["loss"])
        <= 1e-5 * reference["after"]["loss"]
    )
    for rank in (0, 1):  # sharded: each process held half of every parameter, not a replica
        shards = json.loads((runs / f"{method}-w2.rank{rank}.shards.json").read_text())
        assert 0.4 * shards["whole"] < shards["local"] < 0.6 * shards["whole"]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_saved_run_loads_and_gives_one_process_logits(runs, method):
    ids = torch.tensor([[5, 17, 42, 9, 77, 3, 120, 64]])
    with torch.inference_mode():
        two = load_run(runs / f"{method}-w2", device="cpu")[0](input_ids=ids).logits
        one = load_run(runs / f"{method}-w1", device="cpu")[0](input_ids=ids).logits
        base = random_model("llama")[0](input_ids=ids).logits
    assert (two - base).abs().max() > 1e-2  # the trained weights were loaded
    assert torch.allclose(two, one, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_sharded_run_resumes_from_its_checkpoint(runs, method):
    for key in ("loss", "eval_loss"):
        assert losses(runs / f"{method}-resumed", key) == losses(runs / f"{method}-w2", key)
    a, b = saved(runs / f"{method}-resumed"), saved(runs / f"{method}-w2")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def refused(tmp_path, monkeypatch, method: str, version: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(method, 1, tmp_path, "run")))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", version)
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and not (tmp_path / "run").exists()
    return lines[0]


def test_the_offered_config_is_fsdp_version_2_for_two_processes():
    settings = yaml.safe_load(FSDP2.read_text())
    assert settings["distributed_type"] == "FSDP" and settings["num_processes"] == 2
    assert settings["fsdp_config"]["fsdp_version"] == 2 and settings["mixed_precision"] == "no"


def test_fsdp_version_1_is_refused_before_any_work(tmp_path, monkeypatch):
    """accelerate's FSDP1 plugin does not start without a GPU (it needs a device for
    `sync_module_states`) and torch deprecates FSDP1: one line naming the fix."""
    assert "--fsdp_version 2" in refused(tmp_path, monkeypatch, "lora", "1")


def test_every_method_is_tested_under_fsdp_and_one_that_is_not_is_refused(tmp_path, monkeypatch):
    assert set(SHARDABLE) == set(METHODS)  # each trained by the tests above
    monkeypatch.delitem(SHARDABLE, "importance")  # as a method added later, before its test
    line = refused(tmp_path, monkeypatch, "importance", "2")
    assert line == "error: method.name: importance is not tested under FSDP"


def test_settings_not_tested_under_fsdp_are_refused(monkeypatch):
    def settings(extend_vocab=None, checkpointing=False) -> SimpleNamespace:
        return SimpleNamespace(
            method=SimpleNamespace(name="lora"),
            model=SimpleNamespace(extend_vocab=extend_vocab),
            train=SimpleNamespace(gradient_checkpointing=checkpointing),
        )

    check_fsdp(settings(checkpointing=True))  # FSDP not asked for: nothing to refuse
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    check_fsdp(settings())
    with pytest.raises(ConfigError, match=r"^model\.extend_vocab: not supported under FSDP"):
        check_fsdp(settings(extend_vocab={"new_tokens": 8}))
    with pytest.raises(ConfigError, match=r"^train\.gradient_checkpointing: not supported"):
        check_fsdp(settings(checkpointing=True))


def test_a_sharded_checkpoint_resumes_only_under_fsdp(tmp_path):
    """Its optimizer state is keyed by parameter name (one process's by position): resuming it
    without FSDP is one line naming the checkpoint, not a traceback."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    whole = {"weight": model.weight.detach(), "bias": model.bias.detach()}
    path = save_checkpoint(tmp_path, 2, model, optimizer, scheduler, {}, (whole, {"state": {}}))
    with pytest.raises(TunelabError, match=f"^{path}: written by a run with FSDP; resume it"):
        load_checkpoint(path, model, optimizer, scheduler)
    plain = save_checkpoint(tmp_path, 3, model, optimizer, scheduler, {})
    assert load_checkpoint(plain, model, optimizer, scheduler)["step"] == 3
