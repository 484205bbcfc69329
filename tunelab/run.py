"""The run directory: the contract between training and everything that consumes runs.

RUN/config.yaml      fully resolved config
RUN/metrics.jsonl    one record per logged step (loss, lr, tokens/s) and eval
RUN/before.json      metrics of the untouched base model
RUN/before-extras.json  the base model's per-task metrics and forgetting perplexities
RUN/mixture.json     multi-task runs: examples and tokens per task in the training mixture
RUN/samples-*.jsonl  prompts, references and generations (before / after)
RUN/summary.json     method, parameter counts, speed, memory, before / after
RUN/adapter/         what trained: PEFT format, a transformers model dir, or ours (+ the new
                     embedding rows, new_rows.safetensors, when model.extend_vocab is on)
RUN/vocab/           model.extend_vocab: the extended tokenizer and extension.json
RUN/checkpoints/     only while a run is in progress (for --resume)
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.io import atomic_dir, atomic_write_text
from tunelab.run_config import RunConfig, dump_config, load_config


@dataclass(frozen=True)
class RunFiles:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def before(self) -> Path:
        return self.root / "before.json"

    @property
    def before_extras(self) -> Path:
        return self.root / "before-extras.json"

    @property
    def mixture(self) -> Path:
        return self.root / "mixture.json"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def vocab(self) -> Path:
        return self.root / "vocab"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def samples(self, tag: str) -> Path:
        return self.root / f"samples-{tag}.jsonl"

    def reset(self) -> None:
        """Start a run afresh: remove what an earlier run in this folder left."""
        for path in (self.metrics, self.summary, self.before, self.samples("before"),
                     self.samples("after")):  # fmt: skip
            path.unlink(missing_ok=True)
        for path in (self.before_extras, self.mixture, self.samples("before-tasks"),
                     self.samples("after-tasks")):  # fmt: skip
            path.unlink(missing_ok=True)
        for folder in (self.adapter, self.checkpoints, self.vocab):
            shutil.rmtree(folder, ignore_errors=True)

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text(encoding="utf-8"))

    def read_before(self) -> dict[str, Any] | None:
        return json.loads(self.before.read_text(encoding="utf-8")) if self.before.exists() else None

    def read_before_extras(self) -> dict[str, Any] | None:
        path = self.before_extras
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def adapter_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.adapter.rglob("*") if p.is_file())


def write_run_config(files: RunFiles, cfg: RunConfig) -> None:
    atomic_write_text(files.config, dump_config(cfg))


def save_adapter(method, model, cfg: RunConfig, files: RunFiles, extra=None) -> None:
    """The method's files, plus what `extra(model, folder)` adds (the new vocabulary rows)."""
    with atomic_dir(files.adapter) as tmp:
        method.save(model, cfg.method, tmp)
        if extra is not None:
            extra(model, tmp)


def read_run_config(run_dir: str | Path) -> RunConfig:
    files = RunFiles(Path(run_dir))
    if not files.config.exists():
        raise TunelabError(f"{run_dir}: not a run directory (no config.yaml)")
    if not files.adapter.exists():
        raise TunelabError(f"{run_dir}: the run has no adapter/ (unfinished or failed)")
    cfg = load_config(files.config)
    from tunelab.methods import get_method  # the methods import torch: only when needed

    get_method(cfg.method.name).check_artifact(files.adapter)
    from tunelab.training.vocab import check_vocab_files

    check_vocab_files(cfg, files.root, files.adapter)
    for weights in sorted(files.adapter.glob("*.safetensors")):
        check_safetensors(weights)
    return cfg


def check_safetensors(path: Path) -> None:
    """A damaged or truncated safetensors file is a one-line error naming it (safetensors checks
    the header and that the file holds every byte the header promises)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as exc:
        raise TunelabError(f"{path}: damaged or truncated safetensors file ({exc})") from None


def load_run(run_dir: str | Path, *, device: str | None = None):
    """(model, tokenizer): the base model with the run's trained weights applied, in eval mode.
    A run with `model.init_from` is rebuilt from its chain (`tunelab.models.chain`)."""
    from tunelab.methods import get_method
    from tunelab.models import load_model_and_tokenizer
    from tunelab.training.vocab import extension_on, load_vocab

    cfg = read_run_config(run_dir)
    files = RunFiles(Path(run_dir))
    base, tokenizer = load_model_and_tokenizer(cfg.model)
    if extension_on(cfg):  # the extended tokenizer and the trained new rows
        base, tokenizer = load_vocab(base, tokenizer, files.root, files.adapter)
    model = get_method(cfg.method.name).load(base, cfg.method, files.adapter)
    if device:
        model.to(device)
    model.eval()
    return model, tokenizer


def content_hash(run_dir: str | Path) -> str:
    """sha256 over the adapter's files (names and bytes): changes whenever the weights do."""
    digest = hashlib.sha256()
    adapter = RunFiles(Path(run_dir)).adapter
    for path in sorted(p for p in adapter.rglob("*") if p.is_file()):
        digest.update(path.relative_to(adapter).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()
