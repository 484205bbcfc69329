"""Shared pieces of the export tests: short runs on the tiny models, and the independent reader —
transformers' GGUF loader (`from_pretrained(..., gguf_file=...)`).

transformers reads llama.cpp's `gemma2`/`gemma3` files but not the first `gemma` layout, which
differs from gemma2 only in what gemma2 adds (sliding window, soft-capping, extra norms). For
gemma the loader is taught that architecture from its own pieces — gemma2's key mapping and its
norm processor (which subtracts the 1 llama.cpp stores) — and is otherwise run unchanged.

Test modules import these with `from .conftest import ...` (pytest runs in importlib mode).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab import train

# multilingual: English, isiXhosa (clicks, long agglutinated words), digits, accents, emoji
TEXTS = [
    "hello world, exported in 2026",
    "Molo! Unjani namhlanje? Ndiyabulela kakhulu. Abantwana bafunda iincwadi ezili-12.",
    "Ça va très bien 😊 — ñandú, straße",
]


def make_run(root: Path, method: str, arch: str = "llama", settings: dict | None = None,
             steps: int = 3, data: dict | None = None, model: str | None = None,
             lr: float | None = 3e-2) -> Path:  # fmt: skip
    """A run of a few steps, by default at a high learning rate, so the update is far from zero
    (`lr=None`: the method's own default)."""
    config = {
        "model": {"name": model or f"random:{arch}"},
        "data": {"train": "builtin:reverse", "builtin_size": 16, "max_length": 32, **(data or {})},
        "method": {"name": method, **(settings or {})},
        "train": {"max_steps": steps, "lr": lr, "batch_size": 4, "tokens_per_batch": 128,
                  "progress": False},
        "eval": {"before": False, "metrics": ["loss"]},
        "output_dir": str(root / f"{method}-{arch}"),
    }  # fmt: skip
    return train(config).run_dir


@contextlib.contextmanager
def gemma_v1_readable():
    """Let transformers' GGUF loader read llama.cpp's `gemma` architecture (see module doc)."""
    from transformers import modeling_gguf_pytorch_utils as loader
    from transformers.integrations import ggml

    mapping = {k: v for k, v in ggml.GGUF_CONFIG_MAPPING["gemma2"].items() if "sliding" not in k}
    ggml.GGUF_CONFIG_MAPPING["gemma"] = mapping
    loader.GGUF_SUPPORTED_ARCHITECTURES.append("gemma")
    loader.TENSOR_PROCESSORS["gemma"] = loader.Gemma2TensorProcessor
    try:
        yield
    finally:
        del ggml.GGUF_CONFIG_MAPPING["gemma"], loader.TENSOR_PROCESSORS["gemma"]
        loader.GGUF_SUPPORTED_ARCHITECTURES.remove("gemma")


def read_gguf(path: Path):
    """(model, tokenizer) from a GGUF file, by transformers' loader."""
    with gemma_v1_readable():
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model.eval(), tokenizer


def logits(model, ids: list[int]) -> torch.Tensor:
    """(T, vocab) for one sequence of ids."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def greedy(model, ids: list[int], steps: int = 12) -> list[int]:
    """Greedy continuation ids, no sampling, no early stop."""
    with torch.no_grad():
        prompt = torch.tensor([ids])
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=steps, min_new_tokens=steps)  # fmt: skip
    return out[0, len(ids) :].tolist()
