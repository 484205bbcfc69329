"""Every use of a private transformers / PEFT / Optuna / torch internal, in one place.

tunelab's training fast paths lean on things those libraries do not promise to keep:
- the attention implementation a model runs under (`config._attn_implementation`), and
  transformers' attention and mask registries with its SDPA helpers (packed attention);
- the inside of PEFT's LoRA layer (`lora_A`, `lora_B`, `scaling`, `lora_variant`, replacing a
  layer's `forward`) for the fused LoRA linear and SwiGLU MLP;
- `logits_to_keep` and a head that the model calls once on its final hidden states (the loss
  bypasses the head and projects only labelled positions itself);
- Optuna's storage object, to fail a trial whose worker process died;
- the gradient hooks of torch's DistributedDataParallel, removed before a model is re-wrapped;
- accelerate's state, set to its FSDP mode on CPU, where accelerate would not choose it.

`fast_paths_enabled()` checks, at first use in a process, that the installed transformers and
PEFT lie in the ranges the fast paths were tested on (`TESTED`, also declared in
pyproject.toml) and that they still behave as tested: a packed row on a tiny llama gives the
same logits under the packed attention as under transformers' own, and a fused LoRA layer the
same output as PEFT's. Outside that, every fast path is off — training runs the plain path
(same results, slower) — and one warning line says why.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import logging
from collections.abc import Callable

import torch
from torch import nn

logger = logging.getLogger(__name__)

# [lowest, first untested) release for each library the fast paths reach into
TESTED = {"transformers": ((5, 20), (5, 30)), "peft": ((0, 21), (0, 22))}


# ---------------------------------------------------------------- the check


@functools.cache
def fast_paths_enabled() -> bool:
    """True where the installed libraries are the tested ones and behave as tested; else the
    reason is logged once (a warning) and every fast path stays off in this process."""
    reason = untested_versions() or _behaviour_differs()
    if reason:
        logger.warning("tunelab: fast paths off, training uses the plain path: %s", reason)
    return not reason


def untested_versions() -> str | None:
    """A sentence naming the first library outside its tested range, or None."""
    for name, (low, high) in TESTED.items():
        version = importlib.metadata.version(name)
        release = _release(version)
        if not low <= release < high:
            tested = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
            return f"{name} {version} is outside the tested range {tested}"
    return None


def _release(version: str) -> tuple[int, int]:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(parts)  # type: ignore[return-value]


def _behaviour_differs() -> str | None:
    """Run each fast path once on a tiny model against the library's own path, in fp32
    whatever autocast the first caller is under."""
    try:
        with torch.random.fork_rng(devices=[]), torch.autocast("cpu", enabled=False):
            torch.manual_seed(0)
            for probe in (_probe_packed_attention, _probe_fused_lora, _probe_head_bypass):
                problem = probe()
                if problem:
                    return problem
    except Exception as error:  # an internal moved or changed its signature
        return f"{type(error).__name__}: {error}"
    return None


def _tiny_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).eval()


def _probe_packed_attention() -> str | None:
    from tunelab.training.packed import packed_attention

    model = _tiny_llama()
    ids = torch.randint(0, 32, (1, 9))
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1]])
    with torch.no_grad():
        # no cache: transformers then reads the restarts of position_ids as separate examples
        expected = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        with packed_attention(model, share_prefixes=False):
            got = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    if not torch.allclose(expected, got, atol=1e-5):
        return "packed attention differs from transformers' own on a packed row"
    return None


def _probe_fused_lora() -> str | None:
    from peft import LoraConfig, inject_adapter_in_model

    from tunelab.training.fastpath import fused_lora

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = inject_adapter_in_model(LoraConfig(r=2, target_modules=targets), _tiny_llama())
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(parameter)  # PEFT starts B at zero: the adapter would add nothing
    ids = torch.randint(0, 32, (2, 7))
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits
        with fused_lora(model):
            got = model(input_ids=ids, use_cache=False).logits
    fused = sum(plain_lora_layer(module) for module in model.modules())
    if fused != len(targets) or not torch.allclose(expected, got, atol=1e-5):
        return "the fused LoRA layers differ from PEFT's"
    config = LoraConfig(r=2, target_modules=["q_proj", "up_proj"], use_dora=True)
    model = inject_adapter_in_model(config, _tiny_llama())
    for name, parameter in model.named_parameters():
        if "lora_B" in name or "magnitude" in name:
            nn.init.normal_(parameter)  # as above; and a magnitude that is not the norm
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits
        with fused_lora(model):
            got = model(input_ids=ids, use_cache=False).logits
    fused = sum(dora_layer(module) for module in model.modules())
    if fused != 2 or not torch.allclose(expected, got, atol=1e-5):
        return "the fused DoRA layers differ from PEFT's"
    return None


def _probe_head_bypass() -> str | None:
    from tunelab.training.loss import _kept_hidden

    model = _tiny_llama()
    ids, keep = torch.randint(0, 32, (2, 7)), torch.tensor([2, 5])
    with torch.no_grad():
        expected = model(input_ids=ids).logits[:, keep]  # (2, 2, V)
        got = model.lm_head(_kept_hidden(model, model.lm_head, {"input_ids": ids}, keep))
    if not torch.allclose(expected, got, atol=1e-5):
        return "bypassing the output head gives other logits"
    return None


# ---------------------------------------------------------------- attention implementation


def transformers_model(model: nn.Module) -> nn.Module | None:
    """The module whose `config` holds the attention implementation, under PEFT/accelerate."""
    for _ in range(4):
        if hasattr(getattr(model, "config", None), "_attn_implementation"):
            return model
        inner = getattr(model, "base_model", None) or getattr(model, "module", None)
        if inner is None or inner is model:
            return None
        model = inner
    return None


def attn_implementation(model: nn.Module) -> str | None:
    """The attention implementation the model runs under now (None: not a transformers one)."""
    base = transformers_model(model)
    return None if base is None else base.config._attn_implementation


def set_attn_implementation(model: nn.Module, name: str) -> None:
    """Switch attention for the next forward without reloading (the model's config is read at
    every call); `name` must be built in or registered with `register_attention`."""
    transformers_model(model).config._attn_implementation = name


def register_attention(name: str, forward: Callable) -> None:
    """Make `name` an attention implementation that calls `forward` with SDPA's masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, forward)  # idempotent
    AttentionMaskInterface.register(name, sdpa_mask)


def sdpa_attention_forward(*args, **kwargs):
    """transformers' own SDPA attention (what "sdpa" runs)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward as forward

    return forward(*args, **kwargs)


def repeat_kv(hidden: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, H_kv, L, D) -> (B, H_kv * groups, L, D), as transformers' attention does."""
    from transformers.integrations.sdpa_attention import repeat_kv as repeat

    return repeat(hidden, groups)


# ---------------------------------------------------------------- PEFT's LoRA layer


def plain_lora_layer(module: nn.Module) -> bool:
    """A PEFT LoRA linear with one adapter, no dropout, no DoRA or other variant, an nn.Linear
    base and no bias on B: the case the fused LoRA linear computes."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    if not isinstance(module, LoraLinear) or type(module.base_layer) is not nn.Linear:
        return False
    if len(module.lora_A) != 1 or module.lora_variant:
        return False
    name = next(iter(module.lora_A))
    return isinstance(module.lora_dropout[name], nn.Identity) and module.lora_B[name].bias is None


def dora_layer(module: nn.Module) -> bool:
    """A PEFT DoRA linear with one adapter, no dropout, an nn.Linear base (not transposed) and
    no bias on B: the case the fused DoRA linear computes."""
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.lora.variants import DoraLinearVariant

    if not isinstance(module, LoraLinear) or type(module.base_layer) is not nn.Linear:
        return False
    if len(module.lora_A) != 1 or module.fan_in_fan_out:
        return False
    name = next(iter(module.lora_A))
    return (
        type(module.lora_variant.get(name)) is DoraLinearVariant
        and name in module.lora_magnitude_vector
        and isinstance(module.lora_dropout[name], nn.Identity)
        and module.lora_B[name].bias is None
    )


def dora_magnitude(module: nn.Module) -> nn.Parameter:
    """The trained magnitude vector (out,) of a `dora_layer`'s active adapter."""
    return module.lora_magnitude_vector[module.active_adapters[0]].weight


def lora_parts(module: nn.Module) -> tuple | None:
    """(W, b, A, B, s) of a plain LoRA layer's one active adapter, or None where PEFT's own
    forward must run (adapter disabled or merged, several active)."""
    names = module.active_adapters
    if module.disable_adapters or module.merged or len(names) != 1:
        return None
    name = names[0]
    if name not in module.lora_A:
        return None
    base = module.base_layer
    return (base.weight, base.bias, module.lora_A[name].weight, module.lora_B[name].weight,
            module.scaling[name])  # fmt: skip


def silu_modules() -> tuple[type, ...]:
    """The module classes that compute SiLU in transformers' MLPs."""
    from transformers.activations import SiLUActivation

    return (SiLUActivation, nn.SiLU)


def patch_forward(module: nn.Module, forward: Callable) -> None:
    """Route calls of `module` through `forward(module, original_forward, *args)`."""
    module.forward = functools.partial(forward, module, module.forward)


def restore_forward(module: nn.Module) -> None:
    del module.forward  # back to the class's forward


# ---------------------------------------------------------------- the head


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Does the transformers model under `model` take `logits_to_keep` (project only some
    positions)? PEFT wrappers pass it on; older architectures may not have it."""
    base = transformers_model(model)
    if base is None:
        return False
    return "logits_to_keep" in inspect.signature(base.forward).parameters


# ---------------------------------------------------------------- Optuna


def fail_trial(study, trial, message: str) -> bool:
    """Mark another process's RUNNING trial FAILED with `message`; False if it finished first.
    Optuna has no public call for this, so it goes through the study's storage."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "error", message)
        return storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


# ---------------------------------------------------------------- torch's DDP


def drop_ddp_hooks(wrapped: nn.Module) -> None:
    """Remove the gradient hooks a DistributedDataParallel wrapper registered on its model's
    parameters, before the model is wrapped anew (training/distributed.py). torch has no
    public call for this; its own tests re-wrap a model the same way."""
    wrapped._remove_autograd_hooks()


# ---------------------------------------------------------------- accelerate's FSDP on CPU


def use_fsdp_on_cpu(accelerator) -> None:
    """Put a CPU launch with FSDP (accelerate 1.x) on accelerate's FSDP path. accelerate's
    `AcceleratorState` chooses `DistributedType.FSDP` only inside its branch for GPU-like
    devices; on CPU it drops the plugin and the model would be DDP-wrapped instead. torch's
    FSDP2 (`fully_shard`) runs on CPU over gloo, and so does the rest of accelerate's FSDP2
    code (prepare, `get_state_dict`, gradient clipping): set the fields that branch sets,
    with the plugin built from the launch's environment as accelerate builds it, and the
    shared process state's mode, as accelerate's state does at the end of its setup (a later
    `AcceleratorState()` copies that mode back over its own)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads FSDP_* as accelerate's own does
    if accelerator.mixed_precision != "no":  # as accelerate's state does for a GPU launch
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
