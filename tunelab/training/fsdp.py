"""Sharded data parallelism: accelerate's FSDP2 plugin (torch's `fully_shard`), launched with
`accelerate launch --use_fsdp --fsdp_version 2 --num_processes N` (or a config file saying
`distributed_type: FSDP`, `fsdp_version: 2`). Each process holds a 1/N shard of every
parameter, gradient and optimizer state; a forward or backward gathers a layer's shards, runs
it, and frees them again; gradients are reduce-scattered (averaged), as DDP all-reduces them.

What tunelab adds around accelerate's own FSDP2 code, so that N processes stay equal to one:
- `check_fsdp`: only FSDP2 (`fsdp_version: 2`; version 1 is deprecated in torch and its
  accelerate plugin does not start without a GPU), only the methods tested under it
  (`SHARDABLE`: all eleven), and not the settings untested under it; the rest is refused in
  one line before any work, with the reason.
- On CPU, accelerate keeps a launch with FSDP as plain data parallelism (its state chooses
  FSDP only for GPU-like devices) although torch shards on CPU over gloo: `enable` switches
  accelerate to its FSDP2 path (`tunelab.compat.use_fsdp_on_cpu`), the very path GPUs take.
- The run directory is written by the main process alone, from a full, unsharded copy:
  `plain_copy` keeps one before sharding, `unshard_into` fills it with the trained weights
  (`accelerator.get_state_dict`: every process takes part in the gathering).
- Checkpoints hold the full trainable tensors and the full optimizer state, keyed by parameter
  name (`gather_checkpoint`, torch's `get_optimizer_state_dict`), so a resume re-shards them
  (`restore`) for however the processes are laid out then.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, parse_flag_from_env
from torch import nn

from tunelab.errors import ConfigError

SHARDABLE = {  # method -> what FSDP shards (each trained against one process in the tests)
    "full": "every parameter",
    "lora": "LoRA matrices beside frozen weights",
    "dora": "LoRA matrices and magnitudes beside frozen weights",
    "ia3": "scaling vectors beside frozen weights",
    "prefix": "the prefix encoder's parameters",
    "prompt": "the virtual-token embeddings",
    "ptuning": "the prompt encoder's parameters",
    "adapter": "bottleneck modules beside frozen weights",
    "bitfit": "bias terms beside frozen weights",
    "ulmfit": "every parameter; FSDP2 reduces the gradients of those unfrozen so far",
    "importance": "the sparse deltas (the indices are buffers, whole on every process)",
}


def requested() -> bool:
    """Whether `accelerate launch` asked for FSDP (it tells its processes in the environment)."""
    return parse_flag_from_env("ACCELERATE_USE_FSDP")


def check_fsdp(cfg) -> None:
    """One line, before any work, for an FSDP launch tunelab does not run (nothing if FSDP was
    not asked for)."""
    if not requested():
        return
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise ConfigError(
            f"accelerate launch: FSDP version {version} is not supported by tunelab; "
            "use `--fsdp_version 2` (fsdp_version: 2 in the config file)"
        )
    method = cfg.method.name
    if method not in SHARDABLE:  # a method added later, until a test trains it under FSDP
        raise ConfigError(f"method.name: {method} is not tested under FSDP")
    if cfg.model.extend_vocab is not None:
        raise ConfigError("model.extend_vocab: not supported under FSDP (not tested)")
    if cfg.train.gradient_checkpointing:
        raise ConfigError(
            "train.gradient_checkpointing: not supported under FSDP; use accelerate's "
            "fsdp_activation_checkpointing instead (not tested here)"
        )


def enable(accelerator: Accelerator) -> None:
    """On a CPU launch that asked for FSDP, run accelerate's FSDP2 path (see the module)."""
    if requested() and accelerator.distributed_type == DistributedType.MULTI_CPU:
        from tunelab.compat import use_fsdp_on_cpu

        use_fsdp_on_cpu(accelerator)


def is_sharded(model: nn.Module) -> bool:
    """Whether `model` was sharded by FSDP2 (`fully_shard`)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def plain_copy(model: nn.Module, accelerator: Accelerator) -> nn.Module | None:
    """A full copy of the model before it is sharded, on the main process of an FSDP run
    (the one that saves and evaluates); None otherwise. It costs the main process the memory
    of one more model, on the CPU."""
    if accelerator.distributed_type != DistributedType.FSDP or not accelerator.is_main_process:
        return None
    device = next(model.parameters()).device
    plain = copy.deepcopy(model.to("cpu"))  # not a second copy on the GPU
    model.to(device)
    return plain


def unshard_into(
    plain: nn.Module | None, prepared: nn.Module, accelerator: Accelerator
) -> nn.Module | None:
    """The trained model as one piece: `plain` holding the trained weights on the main process
    (every process must call this: the weights are gathered from all), None on the others;
    `prepared` itself unwrapped when it is not sharded."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return accelerator.unwrap_model(prepared)
    reshard(prepared)
    full = accelerator.get_state_dict(prepared)  # full tensors, on the CPU
    if plain is None:
        return None
    plain.load_state_dict(full)
    return plain.to(accelerator.device)


def reshard(model: nn.Module) -> None:
    """Register every unit's shards again. A forward without backward (a periodic evaluation)
    leaves the root unit's parameters gathered (FSDP2 keeps them for the backward it expects),
    and the state-dict functions, like the optimizer, know the shards only."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def gather_checkpoint(model: nn.Module, optimizer) -> tuple[dict, dict] | None:
    """(full trainable tensors, full optimizer state by parameter name) of a sharded model,
    on the CPU (every process must call this: each takes part in the gathering; the main
    process, rank 0, writes them, and only it receives the optimizer state). None for a model
    that is not sharded (its own tensors and optimizer are whole)."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    reshard(model)
    tensors = {name: _full(p) for name, p in model.named_parameters() if p.requires_grad}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole on rank 0 only
    state = get_optimizer_state_dict(model, _inner(optimizer), options=options)
    return tensors, state


def restore(model: nn.Module, optimizer, tensors: dict, state: dict[str, Any]) -> None:
    """Load full `tensors` and a full optimizer `state` (from `gather_checkpoint`) into a
    sharded model and its optimizer: each process keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    names = {name for name, param in model.named_parameters() if param.requires_grad}
    unknown = sorted(set(tensors) - names)
    if unknown:
        raise KeyError(f"saved tensor {unknown[0]!r} has no trainable parameter in the model")
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, tensors, options=options)
    set_optimizer_state_dict(model, _inner(optimizer), state, options=options)


def _full(param: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    value = param.detach()
    return (value.full_tensor() if isinstance(value, DTensor) else value).cpu()


def _inner(optimizer):
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)
