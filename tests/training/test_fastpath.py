"""Fast paths change the work, never the results: packed attention gives each example's own
logits, a shared prompt prefix stored once gives the same loss and gradients, fused LoRA gives
PEFT's, and leaving the block restores the model."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunelab.compat import fast_paths_enabled
from tunelab.data.batching import packed_batch, padded_batch
from tunelab.data.types import IGNORE, Tokenized
from tunelab.methods.peft_base import resolve_targets
from tunelab.models.tiny import random_model
from tunelab.training import fastpath
from tunelab.training.fastpath import fast_paths
from tunelab.training.loss import token_loss_sum
from tunelab.training.packed import MIN_SHARED, SHARED_SDPA, share_prefix

PACKING_ARCHS = ("llama", "qwen2", "gemma", "gemma3", "mistral")  # the last two: sliding windows


def rows(lengths: list[int], seed: int = 0, prefix: int = 0) -> list[Tokenized]:
    """Examples whose first half is an unlabelled prompt; the first `prefix` tokens (a system
    prompt) are the same in all of them."""
    generator = torch.Generator().manual_seed(seed)
    opening = torch.randint(0, 256, (prefix,), generator=generator).tolist()
    items = []
    for length in lengths:
        ids = opening + torch.randint(0, 256, (length,), generator=generator).tolist()
        cut = prefix + length // 2
        items.append(Tokenized(ids, [IGNORE] * cut + ids[cut:]))
    return items


def with_lora(arch: str, dora: bool = False):
    model, _ = random_model(arch, seed=0)
    torch.manual_seed(0)  # PEFT draws A from the global generator: the same A in any test order
    config = LoraConfig(r=4, lora_alpha=8, target_modules=resolve_targets(model, "all"),
                        use_dora=dora)  # fmt: skip
    model = get_peft_model(model.eval(), config)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # zero at init: make the adapter matter
            torch.nn.init.normal_(param, std=0.2, generator=torch.Generator().manual_seed(1))
    return model


def loss_and_gradients(model, batch, fast: bool):
    model.zero_grad(set_to_none=True)
    if fast:
        with fast_paths(model, packing="position_ids" in batch):
            loss, _ = token_loss_sum(model, batch)
            loss.backward()
    else:
        loss, _ = token_loss_sum(model, batch)
        loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("arch", PACKING_ARCHS)
@pytest.mark.parametrize(
    "lengths", [[5, 19, 3, 12], [6, 6, 6], [20, 20, 20]], ids=["mixed", "equal", "equal-long"]
)  # sliding-window archs: some examples longer than the window (tiny.WINDOW), some shorter
def test_packed_row_logits_equal_each_example_alone(arch, lengths):
    model, _ = random_model(arch, seed=0)
    model.eval()
    batch = packed_batch(rows(lengths))
    with torch.no_grad(), fast_paths(model, packing=True):
        assert model.config._attn_implementation == SHARED_SDPA
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       use_cache=False).logits[0]  # fmt: skip
    assert model.config._attn_implementation == "sdpa"
    start = 0
    for item in rows(lengths):
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([item.input_ids]), use_cache=False).logits[0]
        torch.testing.assert_close(packed[start : start + len(item)], alone, atol=1e-5, rtol=0)
        start += len(item)


@pytest.mark.parametrize("arch", ("llama", "bloom", "gpt2"))
def test_fused_lora_same_loss_and_gradients_as_peft(arch):
    model = with_lora(arch)
    items = rows([7, 11, 4])
    batch = packed_batch(items) if arch == "llama" else padded_batch(items, pad_id=259)
    reference_loss, reference = loss_and_gradients(model, batch, fast=False)
    loss, grads = loss_and_gradients(model, batch, fast=True)
    torch.testing.assert_close(loss, reference_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == reference.keys()
    assert all("lora_" in name for name in grads)  # the frozen base gets no gradient
    for name, grad in reference.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("arch", ("llama", "qwen2"))
def test_swiglu_mlps_run_fused_with_peft_gradients(arch):
    """The MLPs whose gate, up and down carry LoRA run as one function (it keeps neither
    silu(gate) nor the product for backward); loss and every gradient are PEFT's."""
    model = with_lora(arch)
    with fast_paths(model, packing=False):
        fused = [m for m in model.modules() if "forward" in vars(m) and hasattr(m, "gate_proj")]
    assert len(fused) == len(model.get_base_model().model.layers)
    batch = packed_batch(rows([7, 11, 4]))
    reference_loss, reference = loss_and_gradients(model, batch, fast=False)
    loss, grads = loss_and_gradients(model, batch, fast=True)
    torch.testing.assert_close(loss, reference_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == reference.keys()
    for name, grad in reference.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("zeros", [False, True], ids=["magnitude", "some-magnitude-zero"])
@pytest.mark.parametrize("arch", ("llama", "bloom"))  # bloom: linear layers with biases
def test_fused_dora_same_loss_and_gradients_as_peft(arch, zeros, monkeypatch):
    """DoRA layers run as one function that keeps neither base(x) nor B(A(x)) for backward;
    loss and the gradients of A, B and the magnitude are PEFT's, also where a magnitude is
    zero (its gradient then comes from the recomputed product, not from the output)."""
    assert fast_paths_enabled()  # probed before the spying starts
    calls = []
    original = fastpath._DoraLinear.apply
    monkeypatch.setattr(fastpath._DoraLinear, "apply", lambda *a: calls.append(1) or original(*a))
    model = with_lora(arch, dora=True)
    if zeros:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "magnitude" in name:
                    parameter[::3] = 0.0
    items = rows([7, 11, 4])
    batch = packed_batch(items) if arch == "llama" else padded_batch(items, pad_id=259)
    reference_loss, reference = loss_and_gradients(model, batch, fast=False)
    assert not calls
    loss, grads = loss_and_gradients(model, batch, fast=True)
    layers = sum(1 for name, _ in model.named_modules() if name.endswith("lora_magnitude_vector"))
    assert len(calls) == layers > 0  # every DoRA layer, once
    torch.testing.assert_close(loss, reference_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == reference.keys()
    assert any("magnitude" in name for name in grads)
    for name, grad in reference.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_fused_dora_under_bf16_autocast_is_as_close_as_peft():
    torch.manual_seed(0)
    model = with_lora("llama", dora=True)
    batch = packed_batch(rows([7, 11, 4]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference_loss, reference = loss_and_gradients(model, batch, fast=False)
        loss, grads = loss_and_gradients(model, batch, fast=True)
    full_loss, full = loss_and_gradients(model, batch, fast=False)
    assert abs(loss - full_loss) <= 2 * abs(reference_loss - full_loss) + 1e-3 * full_loss
    for name, exact in full.items():
        assert grads[name].dtype == torch.float32, name
        bound = 1.5 * _relative_error(reference[name], exact) + 1e-2
        assert _relative_error(grads[name], exact) <= bound, name


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.float() - reference.float()).norm() / reference.float().norm())


@pytest.mark.parametrize("arch", ("llama", "bloom"))  # SwiGLU MLPs; linear layers with biases
def test_fused_lora_under_bf16_autocast_computes_as_autocast_does(arch, monkeypatch):
    """Under bf16 autocast the fused layers run (not PEFT's forward) in bf16, and their loss and
    gradients are PEFT's under the same autocast to bf16's precision; the gradients stay fp32."""
    assert fast_paths_enabled()  # probed before the spying starts
    calls = []
    for function in (fastpath._LoraLinear, fastpath._LoraSwiGLU):
        original = function.apply
        monkeypatch.setattr(
            function, "apply", lambda *a, f=original: calls.append(a[0].dtype) or f(*a)
        )
    torch.manual_seed(0)  # PEFT initialises A from the global generator
    model = with_lora(arch)
    items = rows([7, 11, 4])
    batch = packed_batch(items) if arch == "llama" else padded_batch(items, pad_id=259)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference_loss, reference = loss_and_gradients(model, batch, fast=False)
        assert not calls
        loss, grads = loss_and_gradients(model, batch, fast=True)
    assert calls and set(calls) == {torch.bfloat16}
    full_loss, full = loss_and_gradients(model, batch, fast=False)  # fp32: the exact values
    assert abs(loss - full_loss) <= 2 * abs(reference_loss - full_loss) + 1e-3 * full_loss
    assert grads.keys() == reference.keys()
    for name, exact in full.items():  # as close to fp32 as autocast's own bf16 gradients
        assert grads[name].dtype == torch.float32, name
        bound = 1.5 * _relative_error(reference[name], exact) + 1e-2
        assert _relative_error(grads[name], exact) <= bound, name


def test_frozen_weights_are_cast_once_and_again_when_changed():
    lowered = fastpath._Lowered()
    frozen = torch.nn.Parameter(torch.randn(4, 3), requires_grad=False)
    first = lowered(frozen, torch.bfloat16)
    assert first.dtype == torch.bfloat16 and lowered(frozen, torch.bfloat16) is first
    with torch.no_grad():
        frozen.add_(1.0)  # e.g. a merge: the copy is stale
    second = lowered(frozen, torch.bfloat16)
    assert second is not first
    torch.testing.assert_close(second, frozen.detach().to(torch.bfloat16))
    trained = torch.nn.Parameter(torch.randn(4, 3))  # cast at every call, in the graph
    assert lowered(trained, torch.bfloat16) is not lowered(trained, torch.bfloat16)
    assert lowered(trained, torch.bfloat16).grad_fn is not None
    assert lowered(first, torch.bfloat16) is first and lowered(None, torch.bfloat16) is None


def test_an_activation_read_by_consecutive_layers_is_cast_once():
    """q, k and v read one input: one cast, and its gradient flows back once, summed."""
    lowered = fastpath._Lowered()
    x = torch.randn(4, 3, requires_grad=True)
    casts = [lowered(x, torch.bfloat16) for _ in range(3)]
    assert casts[0] is casts[1] is casts[2] and casts[0].grad_fn is not None
    sum(cast.float().sum() * (i + 1) for i, cast in enumerate(casts)).backward()
    torch.testing.assert_close(x.grad, torch.full((4, 3), 6.0))
    with torch.no_grad():
        x.mul_(2.0)  # changed in place: cast again
    assert lowered(x, torch.bfloat16) is not casts[0]
    again = lowered(x, torch.bfloat16)
    lowered(torch.randn(4, 3), torch.bfloat16)  # one entry: another input takes it
    assert lowered(x, torch.bfloat16) is not again
    with torch.no_grad():  # a cast made without a graph is not reused where one is wanted
        bare = lowered(x, torch.bfloat16)
    assert lowered(x, torch.bfloat16) is not bare


def test_leaving_the_block_restores_peft_forward():
    model = with_lora("llama")
    with fast_paths(model):
        patched = [m for m in model.modules() if "forward" in vars(m)]
        assert patched  # the LoRA layers were fused inside the block
    assert not [m for m in model.modules() if "forward" in vars(m)]


def test_disabled_adapter_inside_the_block_gives_the_base_model():
    model = with_lora("llama")
    ids = torch.tensor([rows([9])[0].input_ids])
    with torch.no_grad():
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        with fast_paths(model), model.disable_adapter():
            fused = model(input_ids=ids).logits
    torch.testing.assert_close(fused, base)


def test_shared_prefix_is_stored_once_and_only_unlearned_tokens_share():
    items = rows([6, 9, 4], prefix=MIN_SHARED + 2)
    packed = packed_batch(items)
    compact = share_prefix(packed)
    shared = MIN_SHARED + 2
    assert compact["input_ids"].shape[1] == packed["input_ids"].shape[1] - 2 * shared
    assert compact["position_ids"][0].tolist() == [
        *range(shared), *range(shared, shared + 6), *range(shared, shared + 9),
        *range(shared, shared + 4),
    ]  # fmt: skip
    learned = compact["labels"] != IGNORE
    assert int(learned.sum()) == int((packed["labels"] != IGNORE).sum())
    unshared = packed_batch(rows([6, 9, 4], prefix=2))
    assert share_prefix(unshared) is unshared  # too little in common: the row as it was


@pytest.mark.parametrize("arch", PACKING_ARCHS)
def test_shared_prefix_same_loss_and_gradients(arch):
    model = with_lora(arch)
    batch = packed_batch(rows([7, 11, 4, 9], prefix=12))
    reference_loss, reference = loss_and_gradients(model, batch, fast=False)
    seen = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda module, args, out: seen.append(args[0].shape[1])
    )
    loss, grads = loss_and_gradients(model, batch, fast=True)
    hook.remove()
    assert seen == [batch["input_ids"].shape[1] - 3 * 12]  # the prefix ran once, not four times
    torch.testing.assert_close(loss, reference_loss, atol=1e-5, rtol=1e-5)
    for name, grad in reference.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
