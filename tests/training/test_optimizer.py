"""The run's AdamW: torch's fused kernel where it applies, the same updates as the loop's."""

import copy

import torch

from tunelab.training.optimizer import build_optimizer


def _params(seed: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(64, 32), (32,), (7, 5, 3)]
    return [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]


def _groups(params):
    return [
        {"params": params[:1], "lr": 1e-2, "weight_decay": 0.1},
        {"params": params[1:], "lr": 3e-3, "weight_decay": 0.0},
    ]


def test_fused_on_cpu_and_same_updates_as_the_loop_kernel():
    fused_params, loop_params = _params(0), _params(0)
    fused = build_optimizer(_groups(fused_params), 1e-2, (0.9, 0.99))
    loop = torch.optim.AdamW(_groups(loop_params), lr=1e-2, betas=(0.9, 0.99))
    assert fused.defaults["fused"] is True
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        for a, b in zip(fused_params, loop_params, strict=True):
            grad = torch.randn(a.shape, generator=generator)
            a.grad, b.grad = grad.clone(), grad.clone()
        fused.step()
        loop.step()
    for a, b, start in zip(fused_params, loop_params, _params(0), strict=True):
        assert not torch.equal(a, start)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_zero_gradient_leaves_a_parameter_bit_identical():
    """What vocabulary extension relies on: old rows (zero gradient, no decay) never move."""
    params = _params(0)
    before = params[1].detach().clone()
    optimizer = build_optimizer(_groups(params), 1e-2, (0.9, 0.999))
    for _ in range(3):
        params[0].grad = torch.ones_like(params[0])
        params[1].grad = torch.zeros_like(params[1])
        params[2].grad = torch.ones_like(params[2])
        optimizer.step()
    assert torch.equal(params[1], before)


def test_not_fused_under_fsdp(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    optimizer = build_optimizer(_groups(_params(0)), 1e-2, (0.9, 0.999))
    assert not optimizer.defaults["fused"]


def test_state_round_trips_through_state_dict():
    """Resuming loads the saved moments into a fresh fused optimizer and steps identically."""
    a, b = _params(0), _params(0)
    first = build_optimizer(_groups(a), 1e-2, (0.9, 0.999))
    for p in a:
        p.grad = torch.full_like(p, 0.5)
    first.step()
    second = build_optimizer(_groups(b), 1e-2, (0.9, 0.999))
    with torch.no_grad():
        for x, y in zip(a, b, strict=True):
            y.copy_(x)
    second.load_state_dict(copy.deepcopy(first.state_dict()))  # as saved and loaded
    for x, y in zip(a, b, strict=True):
        x.grad = torch.full_like(x, -0.25)
        y.grad = torch.full_like(y, -0.25)
    first.step()
    second.step()
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
