"""Shared pytest setup for the tunelab tests."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "integration: loads the real embedded model (slow on first run, ~25 s)"
    )


def pytest_sessionstart(session):
    # Tiny models: one thread avoids oversubscription overhead on small matrices.
    import torch

    torch.set_num_threads(1)
