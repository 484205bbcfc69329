"""Shared pytest setup for the tunelab tests."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "integration: loads the real embedded model (slow on first run, ~25 s)"
    )
