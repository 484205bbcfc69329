"""Models: loading (embedded GGUF, local dir, .gguf, hub id, random:<arch>) and the
architecture table that tells methods where blocks, projections and heads live."""

from tunelab.models.arch import ARCHS, ArchSpec, arch_of, decoder_layers
from tunelab.models.load import cache_dir, load_model_and_tokenizer, resolve_model_dir
from tunelab.models.tiny import TINY_ARCHS, random_model

__all__ = [
    "ARCHS",
    "TINY_ARCHS",
    "ArchSpec",
    "arch_of",
    "cache_dir",
    "decoder_layers",
    "load_model_and_tokenizer",
    "random_model",
    "resolve_model_dir",
]
