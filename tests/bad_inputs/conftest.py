"""Fixtures of the bad-input corpus."""

from __future__ import annotations

import pytest

from tests.bad_inputs.corpus import make_finished_runs


@pytest.fixture(scope="session")
def finished_runs(tmp_path_factory):
    return make_finished_runs(tmp_path_factory.mktemp("finished"))
