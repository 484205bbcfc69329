"""Write a merged model and its tokenizer as one GGUF file (llama.cpp / Ollama), through the
`gguf` library's writer and quantisers.

Tensor types follow llama.cpp's converter: 1-D tensors (norms, biases) stay f32; matrices take
the chosen type; for q8_0 a matrix whose rows do not split into 32-value blocks falls back to f16.
The file is written to a hidden temporary file beside `output` and renamed over it at the end,
so `output` is whole or absent, never half-written.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import gguf
import numpy as np

from tunelab.errors import TunelabError
from tunelab.export.layout import add_hyperparameters, gguf_tensors, layout_of
from tunelab.export.vocab import add_tokenizer
from tunelab.io import fsync_dir, fsync_file

Q = gguf.GGMLQuantizationType
# --dtype -> (matrix tensor type, general.file_type)
DTYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
MAGIC = b"GGUF"


def check_gguf_output(output: Path, overwrite: bool) -> None:
    """Refuse an output that is a folder, lacks the .gguf suffix, or exists (unless `overwrite`,
    and even then only a GGUF file is replaced: nothing else is ever deleted)."""
    if output.suffix.lower() != ".gguf":
        raise TunelabError(f"export: output {output} should end in .gguf")
    if output.is_dir():
        raise TunelabError(f"export: output {output} is a folder; give a file path")
    if output.exists():
        if not overwrite:
            raise TunelabError(f"export: {output} exists; pass --overwrite to replace it")
        with open(output, "rb") as handle:
            if handle.read(4) != MAGIC:
                raise TunelabError(f"export: {output} is not a GGUF file; it is not replaced")


def tensor_type(data: np.ndarray, dtype: str) -> gguf.GGMLQuantizationType:
    """The GGML type for one tensor under `--dtype`."""
    matrix_type = DTYPES[dtype][0]
    if data.ndim < 2:
        return Q.F32
    if matrix_type == Q.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
        return Q.F16
    return matrix_type


def write_gguf(model, tokenizer, metadata: dict[str, str], output: Path, *, dtype: str,
               pre: str, progress: bool = False) -> Path:  # fmt: skip
    """Write `model` (a merged transformers CausalLM) and `tokenizer` to `output` atomically.
    `metadata`: provenance written as `tunelab.<key>` strings (method, run, base model)."""
    layout = layout_of(model.config)
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[layout.arch])
    writer.add_name(metadata.get("run", "tunelab export"))
    writer.add_finetune(metadata.get("method", ""))
    writer.add_file_type(DTYPES[dtype][1])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in metadata.items():
        writer.add_string(f"tunelab.{key}", value)
    add_hyperparameters(writer, model.config, layout)
    add_tokenizer(writer, tokenizer, model.config.vocab_size, pre)
    tensors = gguf_tensors(model, layout)
    for name, data in _tracked(tensors, len(model.state_dict()), progress):
        kind = tensor_type(data, dtype)
        encoded = gguf.quants.quantize(data, kind)
        raw_dtype = kind if kind not in (Q.F32, Q.F16) else None
        writer.add_tensor(name, encoded, raw_dtype=raw_dtype)
    _write_atomically(writer, output, progress)
    return output


def _tracked(items: Iterable, total: int, progress: bool) -> Iterable:
    if not progress:
        return items
    from rich.progress import track

    return track(items, total=total, description="converting tensors", transient=True)


def _write_atomically(writer: gguf.GGUFWriter, output: Path, progress: bool) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    scratch = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        writer.write_header_to_file(scratch)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
        writer.close()
        fsync_file(scratch)
        os.replace(scratch, output)
        fsync_dir(output.parent)  # the rename itself
    except BaseException:
        writer.close()
        scratch.unlink(missing_ok=True)
        raise
