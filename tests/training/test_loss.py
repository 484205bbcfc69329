"""The loss: chunked linear cross-entropy equals plain F.cross_entropy over full logits, in value
and in every gradient, on tiny llama, bloom and gpt2, under prompt tuning (logits longer than
labels), on packed rows, and through the fallback for heads it cannot bypass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PromptTuningConfig, get_peft_model

from tunelab.data.batching import packed_batch, padded_batch
from tunelab.data.types import IGNORE, Tokenized
from tunelab.models.tiny import random_model
from tunelab.training.loss import _plain_head, linear_cross_entropy, token_loss_sum

ARCHS = ("llama", "bloom", "gpt2")


def examples(count: int = 3, seed: int = 0) -> list[Tokenized]:
    """Examples of different lengths whose first half is an unlabelled prompt."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for index in range(count):
        length = 7 + 4 * index
        ids = torch.randint(0, 256, (length,), generator=generator).tolist()
        labels = [IGNORE] * (length // 2) + ids[length // 2 :]
        items.append(Tokenized(ids, labels))
    return items


def plain_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The textbook loss: full logits (B, T, V), shifted, summed over labelled tokens."""
    targets = labels[:, 1:]
    loss = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="sum"
    )
    return loss, int((targets != IGNORE).sum())


def gradients(model) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def assert_same_gradients(ours: dict, reference: dict) -> None:
    assert ours.keys() == reference.keys() and ours
    for name, grad in reference.items():
        torch.testing.assert_close(ours[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def tiny(arch: str):
    model, _ = random_model(arch, seed=0)
    return model.eval()  # no dropout: both passes see the same function


@pytest.mark.parametrize("arch", ARCHS)
def test_matches_plain_cross_entropy_and_its_gradients(arch):
    model = tiny(arch)
    batch = padded_batch(examples(), pad_id=259)
    loss, count = token_loss_sum(model, batch)
    loss.backward()
    ours = gradients(model)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference, reference_count = plain_loss(logits, batch["labels"])
    reference.backward()
    assert count == reference_count
    torch.testing.assert_close(loss, reference, atol=1e-4, rtol=1e-5)
    assert_same_gradients(ours, gradients(model))  # includes the tied embedding / head


@pytest.mark.parametrize("chunk_rows", [1, 3, 1000])
def test_linear_cross_entropy_any_chunking(chunk_rows):
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(10, 6, generator=generator, requires_grad=True)
    weight = torch.randn(11, 6, generator=generator, requires_grad=True)
    bias = torch.randn(11, generator=generator, requires_grad=True)
    targets = torch.randint(0, 11, (10,), generator=generator)
    ours = linear_cross_entropy(hidden, weight, bias, targets, chunk_rows=chunk_rows)
    (2 * ours).backward()  # a non-unit upstream gradient must scale all three
    mine = [t.grad.clone() for t in (hidden, weight, bias)]
    for tensor in (hidden, weight, bias):
        tensor.grad = None
    reference = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="sum")
    (2 * reference).backward()
    torch.testing.assert_close(ours, reference)
    for grad, tensor in zip(mine, (hidden, weight, bias), strict=True):
        torch.testing.assert_close(grad, tensor.grad)
    with torch.inference_mode():
        torch.testing.assert_close(
            linear_cross_entropy(hidden, weight, bias, targets, chunk_rows=chunk_rows), reference
        )


def test_only_what_trains_gets_a_gradient():
    hidden = torch.randn(4, 6, requires_grad=True)
    weight = torch.randn(9, 6)  # frozen head
    loss = linear_cross_entropy(hidden, weight, None, torch.tensor([0, 1, 2, 8]))
    loss.backward()
    assert hidden.grad is not None and weight.grad is None


def test_prompt_tuning_logits_longer_than_labels():
    """Prompt tuning puts V virtual tokens first: logits (B, V + T, vocab), labels (B, T)."""
    virtual = 5
    model = get_peft_model(
        tiny("llama"), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=virtual)
    )
    batch = padded_batch(examples(), pad_id=259)
    loss, count = token_loss_sum(model, batch)
    loss.backward()
    ours = gradients(model)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape[1] == virtual + batch["labels"].shape[1]
    reference, reference_count = plain_loss(logits[:, virtual:], batch["labels"])
    reference.backward()
    assert count == reference_count
    torch.testing.assert_close(loss, reference, atol=1e-4, rtol=1e-5)
    assert_same_gradients(ours, gradients(model))  # the virtual-token embeddings


def test_packed_row_equals_the_examples_one_by_one():
    model = tiny("llama")
    items = examples(4)
    loss, count = token_loss_sum(model, packed_batch(items))
    separate = [token_loss_sum(model, padded_batch([item], pad_id=259)) for item in items]
    assert count == sum(n for _, n in separate)
    torch.testing.assert_close(loss, sum(part for part, _ in separate), atol=1e-4, rtol=1e-5)


def test_head_with_an_adapter_falls_back_to_full_logits():
    """A LoRA on the head changes its output: the bypass must not be used, the loss still equals
    the plain one."""
    model = get_peft_model(tiny("llama"), LoraConfig(target_modules=["lm_head"], r=2))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)  # a head that really differs from the base one
    assert _plain_head(model) is None
    batch = padded_batch(examples(), pad_id=259)
    loss, _ = token_loss_sum(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(loss, plain_loss(logits, batch["labels"])[0], atol=1e-4, rtol=1e-5)


def test_no_labels_gives_zero():
    model = tiny("llama")
    batch = padded_batch([Tokenized([1, 2, 3], [IGNORE] * 3)], pad_id=259)
    loss, count = token_loss_sum(model, batch)
    assert count == 0 and float(loss.detach()) == 0.0
