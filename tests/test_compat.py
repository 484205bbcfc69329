"""The private-internals check: the installed libraries pass it; a simulated untested version
or a changed behaviour turns every fast path off with one warning, and training then computes
the same loss and gradients on the plain path."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.training.test_fastpath import loss_and_gradients, rows, with_lora
from tunelab import compat
from tunelab.data.batching import packed_batch
from tunelab.training.fastpath import fast_paths


@pytest.fixture
def fresh_check():
    """Each test runs the first-use check anew; the real result is restored afterwards."""
    compat.fast_paths_enabled.cache_clear()
    yield
    compat.fast_paths_enabled.cache_clear()


def test_installed_versions_are_tested_and_behave(fresh_check):
    assert compat.untested_versions() is None
    assert compat.fast_paths_enabled()


def test_untested_version_turns_fast_paths_off(fresh_check, monkeypatch, caplog):
    real = compat.importlib.metadata.version
    monkeypatch.setattr(
        compat.importlib.metadata,
        "version",
        lambda name: "6.1.0" if name == "transformers" else real(name),
    )
    with caplog.at_level(logging.WARNING, logger="tunelab.compat"):
        assert not compat.fast_paths_enabled()
        assert not compat.fast_paths_enabled()  # checked once: one warning per process
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "transformers 6.1.0 is outside the tested range" in warnings[0]


def test_changed_behaviour_turns_fast_paths_off(fresh_check, monkeypatch, caplog):
    monkeypatch.setattr(compat, "_probe_fused_lora", lambda: "the fused LoRA layers differ")
    with caplog.at_level(logging.WARNING, logger="tunelab.compat"):
        assert not compat.fast_paths_enabled()
    assert "the fused LoRA layers differ" in caplog.text


def test_a_moved_internal_is_caught(fresh_check, monkeypatch):
    def moved():
        raise ImportError("cannot import name 'sdpa_mask'")

    monkeypatch.setattr(compat, "_probe_packed_attention", moved)
    assert not compat.fast_paths_enabled()


def test_plain_path_gives_the_fast_paths_results(fresh_check, monkeypatch):
    model = with_lora("llama")
    batch = packed_batch(rows([5, 9, 3, 12], prefix=10))
    fast_loss, fast_grads = loss_and_gradients(model, batch, fast=True)
    monkeypatch.setattr(compat, "untested_versions", lambda: "simulated untested version")
    compat.fast_paths_enabled.cache_clear()
    with fast_paths(model, packing=True):
        assert compat.attn_implementation(model) == "sdpa"  # nothing switched
        assert not any(hasattr(m, "__dict__") and "forward" in m.__dict__ for m in model.modules())
    plain_loss, plain_grads = loss_and_gradients(model, batch, fast=True)
    torch.testing.assert_close(plain_loss, fast_loss, rtol=1e-5, atol=1e-4)
    assert plain_grads.keys() == fast_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grad, fast_grads[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    ("version", "release"), [("5.24.0", (5, 24)), ("0.21.2", (0, 21)), ("5.30.0.dev0", (5, 30))]
)
def test_release_parsing(version, release):
    assert compat._release(version) == release
