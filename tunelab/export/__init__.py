"""Taking a finished run out of tunelab: merged into a transformers folder (`merge`) or written as
one GGUF file for llama.cpp / Ollama (`gguf_file`, `layout`, `vocab`, `ollama`); `export_run`
is the entry point. Tests read every artifact back with an independent reader (transformers)."""

from tunelab.export.run import Exported, export_run

__all__ = ["Exported", "export_run"]
