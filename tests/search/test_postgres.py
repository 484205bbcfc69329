"""`tunelab search --storage postgresql://...` against a real PostgreSQL server: the fixture
starts its own cluster (initdb + pg_ctl, a temporary folder, a free port on 127.0.0.1, as the
`postgres` user when the tests run as root) and two worker processes share one study through
the URL exactly as the README writes it: no lost and no duplicated trials; a trial left running
by a worker that died is marked failed and the study still completes."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.search.conftest import tiny_config
from tunelab.search import run_search
from tunelab.search.objective import owner
from tunelab.search.study import sqlalchemy_url

BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run as `postgres` then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture
def postgres_url():
    if not BINARIES:
        pytest.skip("PostgreSQL server binaries missing (Debian package postgresql; .ci/run "
                    "installs it)")  # fmt: skip
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
    binaries = Path(BINARIES[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="tunelab-pg-"))
    root.chmod(0o777)  # the server user writes its cluster and socket here
    data, port = root / "data", free_port()
    run = lambda *cmd: subprocess.run(as_server_user([str(c) for c in cmd]), check=True,  # noqa: E731
                                      capture_output=True, timeout=60)  # fmt: skip
    run(binaries / "initdb", "-D", data, "-A", "trust", "-U", "tunelab", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(binaries / "pg_ctl", "-D", data, "-o", options, "-l", root / "log", "-w", "start")
    try:
        yield f"postgresql://tunelab@127.0.0.1:{port}/postgres"
    finally:
        run(binaries / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(tmp_path, postgres_url):
    root = tmp_path / "out"
    space = {"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}
    result = run_search(tiny_config(root, **space), trials=4, workers=2, storage=postgres_url)
    assert result.counts.get("fail", 0) == 0
    study = optuna.load_study(study_name="out", storage=sqlalchemy_url(postgres_url))
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # none lost, none twice
    assert 4 <= len(trials) <= 5  # a worker may start one trial past the target
    assert all(t.state == TrialState.COMPLETE for t in trials)
    run_dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(run_dirs)) == len(run_dirs)
    for run_dir in run_dirs:
        assert (Path(run_dir) / "summary.json").is_file()
    rows = (root / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(trials)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a worker that died mid-trial: its trial stays RUNNING in the database
    study.ask().set_user_attr("worker", {**owner(), "pid": dead.pid})
    finished = len(trials)
    result = run_search(tiny_config(root, **space), trials=finished + 1, storage=postgres_url)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.RUNNING) == 0
    assert states.count(TrialState.COMPLETE) == finished + 1 == result.finished
