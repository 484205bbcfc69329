"""`tunelab serve`: gather the runs, load the base once, and run the HTTP app with uvicorn.

`load_runs` decides what is served before the model loads: every finished run under the --runs
folders plus the explicit NAME=RUN pairs. The base is --model (or the first run's base); a
discovered run of another base is skipped with a one-line reason, an explicit one is an error;
so is a run that starts from another run (`model.init_from`): its base is that run's merged
model, which an adapter view of the plain base would not reproduce.
`BackgroundServer` runs the same app on a free local port in a thread (tests, benchmarks).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.config import ModelConfig
from tunelab.errors import TunelabError
from tunelab.run import read_run_config
from tunelab.serve.adapters import AdapterSet, describe
from tunelab.serve.catalog import discover, is_finished_run
from tunelab.serve.threads import apart


@dataclass
class Plan:
    base: ModelConfig
    runs: dict[str, Path]  # name -> run folder, all on `base`
    skipped: list[str] = field(default_factory=list)  # one line each: why a run is not served


def plan_runs(roots: list[Path], explicit: dict[str, str], model: str | None) -> Plan:
    """What to serve, checked before any model loads."""
    found = discover(roots)
    for name, path in explicit.items():
        if not is_finished_run(Path(path)):
            raise TunelabError(
                f"--adapter {name}={path}: not a finished run "
                "(summary.json, config.yaml and adapter/ are needed)"
            )
        found[name] = Path(path)
    configs = {name: read_run_config(path).model for name, path in found.items()}
    chained = {name: chained_reason(configs[name]) for name in found if configs[name].init_from}
    for name in chained.keys() & explicit.keys():
        raise TunelabError(f"--adapter {name}={found[name]}: {chained[name]}")
    plain = {name: config for name, config in configs.items() if name not in chained}
    base = _base(model, plain, explicit)
    plan = Plan(base, {})
    for name, path in found.items():
        if name in chained:
            plan.skipped.append(f"{name} ({path}): {chained[name]}")
        elif configs[name] == base:
            plan.runs[name] = path
        elif name in explicit:
            raise TunelabError(
                f"--adapter {name}={path}: trained on {describe(configs[name])}, "
                f"not on the served base {describe(base)}"
            )
        else:
            plan.skipped.append(
                f"{name} ({path}): trained on {describe(configs[name])}, not on the served base"
            )
    return plan


def chained_reason(config: ModelConfig) -> str:
    """Why a run with `model.init_from` is not served as an adapter: its base is another run's
    merged model, not the served base, so applying it to the served base would be wrong."""
    return (
        f"starts from run {config.init_from} (model.init_from), not from a plain base; "
        "serve its merged model instead: tunelab merge RUN OUT, then tunelab serve --model OUT"
    )


def _base(model: str | None, configs: dict[str, ModelConfig], explicit: dict) -> ModelConfig:
    """--model (as the runs trained it, dtype and seed included), else the base most runs
    share — the explicit --adapter runs first; between equals, the first found."""
    named = {name: config for name, config in configs.items() if name in explicit} or configs
    candidates = [c for c in named.values() if model is None or c.name == model]
    if not candidates:
        if model is None:
            raise TunelabError("serve: no finished runs found; give --runs, --adapter or --model")
        return ModelConfig(name=model)
    counts = Counter(config.model_dump_json() for config in candidates)
    return max(candidates, key=lambda config: counts[config.model_dump_json()])


def load_adapters(plan: Plan) -> AdapterSet:
    served = AdapterSet(plan.base)
    for name, path in plan.runs.items():
        served.add(name, path)
    return served


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def banner(url: str, names: list[str], api_key: str | None) -> str:
    """What `tunelab serve` prints once listening: URL, names, and how to call it."""
    name = names[1] if len(names) > 1 else names[0]
    auth = f" -H 'Authorization: Bearer {api_key}'" if api_key else ""
    key = repr(api_key) if api_key else "'unused'"
    return "\n".join(
        [
            f"tunelab serve: {url}  (web page: {url}/)",
            f"models: {', '.join(names)}",
            "",
            f"curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\",
            f"""  -d '{{"model": "{name}", "messages": [{{"role": "user", "content": "Hi"}}]}}'""",
            "",
            "from openai import OpenAI",
            f"client = OpenAI(base_url='{url}/v1', api_key={key})",
            f"client.chat.completions.create(model='{name}', "
            "messages=[{'role': 'user', 'content': 'Hi'}])",
        ]
    )


class BackgroundServer:
    """The app on 127.0.0.1:<free port> in a daemon thread; `with` starts and stops it."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(
            app, host=host, port=self.port, log_level="warning", timeout_graceful_shutdown=5
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def print_vllm_command(plan: Plan) -> str:
    """The `vllm serve` command for the plan's LoRA runs, and which runs vLLM cannot carry."""
    from tunelab.models import resolve_model_dir
    from tunelab.serve.catalog import vllm_command

    methods = {name: read_run_config(path).method.name for name, path in plan.runs.items()}
    try:
        base_dir = str(resolve_model_dir(plan.base.name))
    except TunelabError:
        base_dir = plan.base.name  # random:<arch>: no directory; vLLM cannot load it anyway
    command, skipped = vllm_command(base_dir, plan.runs, methods)
    lines = [command]
    for name, method in skipped:
        lines.append(
            f"# not carried: {name} ({method}): vLLM serves LoRA adapters only; "
            f"use `tunelab merge` (or GGUF) for it"
        )
    return "\n".join(lines)


def run_server(plan: Plan, roots: list[Path], *, host: str, port: int, echo=print, **limits):
    """Load the runs, print the banner, serve until Ctrl-C (in-flight jobs are cancelled)."""
    import uvicorn

    from tunelab.serve.api import ServerState, create_app
    from tunelab.serve.engine import Scheduler

    adapters = apart(load_adapters, plan)  # the worker's pool is to be the only one
    batching = {
        key: limits.pop(key)
        for key in ("max_batch", "max_queue", "window", "fold_wait", "prepack", "measure")
        if key in limits
    }
    scheduler = Scheduler(adapters, **batching)
    state = ServerState(adapters, scheduler, roots=roots, **limits)
    app = create_app(state)
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    echo(banner(f"http://{shown}:{port}", state.names(), state.api_key))
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
