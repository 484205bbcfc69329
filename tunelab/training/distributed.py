"""Data parallelism across processes (`accelerate launch --multi_gpu --num_processes N`, CPU
processes on gloo or GPUs on NCCL): what keeps N processes equal to one.

- The loss of an optimizer step is normalised by the labelled tokens of the whole step, all
  processes together (`step_scale`), so N processes with one micro-batch each compute the
  gradient one process with `grad_accum = N` computes, not a mean of per-process means.
- DistributedDataParallel registers, when it wraps the model, the parameters that require a
  gradient then, and expects a gradient for each of them at every step. A method whose
  trainable set changes during training (ULMFiT's gradual unfreezing) would make it fail
  (frozen ones get none) or, worse, skip averaging (ones unfrozen later are not registered,
  so each process would apply its own gradient and the replicas drift apart). `rewrap` wraps
  the model anew whenever the set changes, as torch's own tests re-wrap a model.
- Only the main process evaluates and writes; the others wait for it at their next collective
  call. torch gives up waiting after 30 minutes (gloo; NCCL 10), less than a CPU evaluation
  with generation can take, so the process group waits `WAIT` instead (`process_group`).
- FSDP2 (`--use_fsdp --fsdp_version 2`) runs for the methods `tunelab.training.fsdp` lists;
  every other launch (FSDP version 1, DeepSpeed, Megatron-LM, TPUs) is refused with one line
  before any work: none is tested (`check_launch`, `check_distributed`).
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, parse_flag_from_env
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tunelab.compat import drop_ddp_hooks
from tunelab.errors import ConfigError
from tunelab.training.divergence import all_ranks
from tunelab.training.fsdp import check_fsdp
from tunelab.training.fsdp import enable as enable_fsdp

if TYPE_CHECKING:
    from tunelab.run_config import RunConfig

WAIT = timedelta(hours=12)  # how long a process waits for the others (e.g. the main's eval)
TESTED = (
    DistributedType.NO,
    DistributedType.MULTI_CPU,
    DistributedType.MULTI_GPU,
    DistributedType.FSDP,  # version 2 only (`tunelab.training.fsdp.check_fsdp`)
)
UNTESTED_LAUNCHES = {  # what `accelerate launch --use_deepspeed` (...) tells its processes
    "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
    "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM",
}
SUPPORTED = (
    "tested: one process, data parallel with `accelerate launch --multi_gpu --num_processes N`, "
    "or `--use_fsdp --fsdp_version 2`; see the README's Reliability section"
)


def process_group() -> list[InitProcessGroupKwargs]:
    """accelerate's settings for the process group (ignored by a single process)."""
    return [InitProcessGroupKwargs(timeout=WAIT)]


def check_launch(cfg) -> None:
    """One line, before accelerate starts, for a launch whose training is not tested here
    (DeepSpeed, Megatron-LM; FSDP other than version 2, or with a method it cannot shard)."""
    check_fsdp(cfg)
    for variable, name in UNTESTED_LAUNCHES.items():
        if parse_flag_from_env(variable):
            raise ConfigError(
                f"accelerate launch: {name} is not supported by tunelab ({SUPPORTED})"
            )


def check_distributed(accelerator: Accelerator) -> None:
    """The same for the launch mode accelerate settled on (e.g. a TPU, an FSDP plugin)."""
    kind = accelerator.distributed_type
    if kind not in TESTED:
        raise ConfigError(
            f"accelerate launch: {kind.value} is not supported by tunelab ({SUPPORTED})"
        )


def step_scale(local_labelled: int, accelerator: Accelerator) -> tuple[int, float]:
    """(labelled tokens of the step over all processes, the factor a process multiplies its
    summed token loss by). Data parallelism averages the processes' gradients, so each
    contributes `world / total`: the average is then the gradient of the step's mean loss.
    FSDP2's reduce-scatter averages the same way (tests/training/test_fsdp.py)."""
    total = max(int(all_ranks(float(local_labelled), accelerator)), 1)
    return total, accelerator.num_processes / total


def trainable_flags(model: nn.Module) -> tuple[bool, ...]:
    """Which parameters require a gradient, in model order (what DDP registered)."""
    return tuple(p.requires_grad for p in model.parameters())


def rewrap(model: nn.Module, flags: tuple[bool, ...], accelerator: Accelerator) -> nn.Module:
    """`model` itself, unless it is DDP-wrapped and the trainable set is no longer `flags`:
    then the old wrapper's gradient hooks are removed and the model is wrapped again. The new
    wrapper skips the broadcast of every weight a first wrap does: the replicas are already
    the same (the first wrap made them so, and every step since applied the same gradient)."""
    if not isinstance(model, DistributedDataParallel) or trainable_flags(model) == flags:
        return model
    drop_ddp_hooks(model)
    handler = accelerator.ddp_handler
    settings = {**(handler.to_kwargs() if handler is not None else {}), "init_sync": False}
    wrapped = DistributedDataParallel(
        model.module, device_ids=model.device_ids, output_device=model.output_device, **settings
    )
    if handler is not None:
        handler.register_comm_hook(wrapped)
    return wrapped


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators, seeded alike in every process."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_accelerator(cfg: RunConfig) -> Accelerator:
    """The run's Accelerator: device, precision and threads from `cfg.train`; launches tunelab
    has not tested refused first (one line)."""
    use_cpu = cfg.train.device == "cpu" or not torch.cuda.is_available()
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if not use_cpu and torch.cuda.is_bf16_supported() else "fp32"
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    check_launch(cfg)  # FSDP 1, DeepSpeed, ...: one line, not accelerate's traceback
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=mixed, kwargs_handlers=process_group())
    enable_fsdp(accelerator)  # on CPU too, where accelerate alone would fall back to DDP
    check_distributed(accelerator)
    return accelerator
