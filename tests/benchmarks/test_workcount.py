"""benchmarks/workcount.py: the hooks count what really goes through the layers and the head,
on a tiny llama: a padded batch with full logits, and tunelab's loss on a packed row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunelab.data.batching import packed_batch
from tunelab.data.types import Tokenized
from tunelab.models import random_model
from tunelab.training.loss import token_loss_sum

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def workcount(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import workcount

    return workcount


def test_full_logits_count_every_position_padding_included(workcount):
    model, _ = random_model("llama", 0)
    ids = torch.randint(3, 100, (3, 7))  # (B, T): padding or not, every position runs
    with workcount.count_work(model) as counted:
        model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
    assert counted.figures() == {"model_tokens": 21, "head_rows": 21}


def test_tunelab_loss_counts_labelled_positions_only(workcount):
    model, _ = random_model("llama", 0)
    items = [
        Tokenized([5, 6, 7, 8, 9], [-100, -100, -100, 8, 9], "a"),
        Tokenized([5, 6, 10, 11], [-100, -100, 10, 11], "b"),
    ]
    batch = packed_batch(items)  # (1, 9), labels -100 at each example's first token
    with workcount.count_work(model) as counted:
        loss, labelled = token_loss_sum(model, batch)
        loss.backward()
    assert labelled == 4
    assert counted.figures() == {"model_tokens": 9, "head_rows": 4}
    with workcount.count_work(model) as counted:  # the hooks are gone after the block
        pass
    model(input_ids=batch["input_ids"])
    assert counted.figures() == {"model_tokens": 0, "head_rows": 0}


def test_flops_charge_weight_gradients_only_where_weights_train(workcount):
    params = {"body": 100, "body_trainable": 10, "head": 50, "head_trainable": 0}
    result = workcount.flops(params, {"model_tokens": 3, "head_rows": 2})
    assert result["credited_flops_per_token"] == (4 * 100 + 2 * 10) + 4 * 50
    assert result["executed_flops"] == 3 * (4 * 100 + 2 * 10) + 2 * (4 * 50)
