"""Runs that start from an earlier run's weights: `model.init_from: RUN`.

The base of such a run is RUN's base with RUN's method merged in (`tunelab.export.merge`), so
any method can follow any mergeable one (continued pretraining, then translation). Nothing of
that base is stored in the new run: it is rebuilt from the chain on every load (RUN's own
`init_from` first, recursively), which costs one load of RUN instead of a 540 MB copy per run.
To make that safe, `train` records RUN's absolute path and the sha256 of its adapter/ in the
new run's config (`model.init_from`, `model.init_from_hash`) and summary.json; a later load of
a RUN that was moved, deleted or retrained is a one-line error, never a silently other base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.compat import attn_implementation
from tunelab.config import ModelConfig
from tunelab.errors import ConfigError, ModelError, TunelabError
from tunelab.run import RunFiles, content_hash, read_run_config
from tunelab.run_config import RunConfig, load_config

KEY = "model.init_from"


def resolve_init_from(cfg: RunConfig) -> None:
    """Check `model.init_from` before any work and pin it: absolute path, adapter hash.

    RUN must be a finished run on the same base (`model.name`, and `seed` for random:<arch>)
    whose method merges, and must not be `output_dir` or a run it starts from (the new run
    would replace its own base). Raises `ConfigError` naming the key; writes nothing."""
    model = cfg.model
    if not model.init_from:
        return
    run = finished_run(model.init_from)
    source = read_run_config(run).model
    if source.name != model.name or (
        model.name.startswith("random:") and source.seed != model.seed
    ):
        raise ConfigError(
            f"{KEY}: {model.init_from} was trained on {source.name} (seed {source.seed}), "
            f"but model.name is {model.name} (seed {model.seed}); leave model.name out to use "
            "that run's base"
        )
    check_mergeable_run(run)
    output = Path(cfg.output_dir).expanduser().resolve()
    if output in chain(run):
        raise ConfigError(
            f"{KEY}: {model.init_from} is, or starts from, output_dir {cfg.output_dir}; "
            "training there would replace its own starting point"
        )
    digest = content_hash(run)
    if model.init_from_hash and model.init_from_hash != digest:
        raise ConfigError(
            f"{KEY}: {model.init_from} changed since init_from_hash was taken "
            f"({digest} != {model.init_from_hash})"
        )
    model.init_from, model.init_from_hash = str(run), digest


def finished_run(path: str) -> Path:
    """RUN as an absolute path, when it holds a finished run (config, adapter, summary)."""
    run = Path(path).expanduser().resolve()
    files = RunFiles(run)
    if not run.is_dir():
        raise ConfigError(f"{KEY}: {path}: no such run directory")
    if not files.config.is_file():
        raise ConfigError(f"{KEY}: {path}: not a run directory (no config.yaml)")
    if not files.summary.is_file() or not files.adapter.is_dir():
        raise ConfigError(f"{KEY}: {path}: the run is not finished (no summary.json/adapter)")
    return run


def check_mergeable_run(run: Path) -> None:
    from tunelab.export.merge import check_mergeable  # imports the methods (torch)

    try:
        check_mergeable(read_run_config(run))
    except TunelabError as exc:
        raise ConfigError(
            f"{KEY}: {run}: its weights cannot be merged into a base ({exc})"
        ) from None


def chain(run: Path) -> list[Path]:
    """RUN and every run it starts from, nearest first (a loop in the chain is an error)."""
    seen: list[Path] = []
    current: Path | None = run
    while current is not None:
        if current in seen:
            raise ConfigError(f"{KEY}: {run}: its init_from chain loops back to {current}")
        seen.append(current)
        parent = load_config(RunFiles(current).config).model.init_from
        current = Path(parent).expanduser().resolve() if parent else None
    return seen


def load_chained(cfg: ModelConfig):
    """(model, tokenizer): RUN's merged model in `cfg.dtype`, after checking that RUN is still
    where it was and holds the weights this config was trained from."""
    import torch

    from tunelab.export.merge import merged_model

    run = Path(cfg.init_from).expanduser()
    if not RunFiles(run).config.is_file() or not RunFiles(run).adapter.is_dir():
        raise ModelError(
            f"{KEY}: {cfg.init_from}: no finished run there any more (moved or deleted?); "
            "this run's base is that run's merged model"
        )
    if cfg.init_from_hash and content_hash(run) != cfg.init_from_hash:
        raise ModelError(
            f"{KEY}: {cfg.init_from} changed since this run was trained from it (its adapter "
            f"hash is no longer {cfg.init_from_hash}); retrain, or restore that run"
        )
    model, tokenizer, _ = merged_model(run)
    model.to(getattr(torch, cfg.dtype))
    if attn_implementation(model) != cfg.attn_implementation:
        model.set_attn_implementation(cfg.attn_implementation)
    return model.eval(), tokenizer


def provenance(cfg: ModelConfig) -> dict[str, Any] | None:
    """summary.json's `init_from` block: which run, its hash, method and base."""
    if not cfg.init_from:
        return None
    source = read_run_config(cfg.init_from)
    summary = RunFiles(Path(cfg.init_from)).read_summary()
    return {
        "run": cfg.init_from,
        "content_hash": cfg.init_from_hash,
        "method": source.method.name,
        "model": source.model.name,
        "steps": summary.get("steps"),
        "chain": [str(run) for run in chain(Path(cfg.init_from))],
    }
