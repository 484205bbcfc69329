"""Fixtures for the data pipeline tests: the byte-level tiny tokenizer and the shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tunelab.models.tiny import byte_tokenizer

REPO = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path | None:
    """The real data sets: $TUNELAB_SHARED_DATA, else shared/data in or beside the checkout."""
    candidates = [REPO / "shared" / "data", REPO.parent / "shared" / "data"]
    if os.environ.get("TUNELAB_SHARED_DATA"):
        candidates.insert(0, Path(os.environ["TUNELAB_SHARED_DATA"]))
    return next((path for path in candidates if (path / "README.md").is_file()), None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("shared/data not found beside the checkout")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture
def plain_tokenizer():
    """The byte tokenizer without a chat template (a base model's tokenizer)."""
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = None
    return tokenizer
