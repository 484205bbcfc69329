"""`tunelab export RUN`: one command for both destinations of a finished run.

--format hf    the merged transformers folder (what `tunelab merge` writes)
--format gguf  one GGUF file for llama.cpp / Ollama (merged weights, tokenizer, chat template,
               provenance), optionally with an Ollama Modelfile (`ollama_dir`)

Every refusal (a method that does not merge, an unsupported architecture or dtype, an output that
would replace something) is raised before the model is loaded, so nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.export.gguf_file import DTYPES, check_gguf_output, write_gguf
from tunelab.export.layout import LAYOUTS, layout_of
from tunelab.export.merge import check_mergeable, merge_run, merged_model
from tunelab.export.ollama import modelfile_text
from tunelab.export.vocab import pre_tokenizer_name
from tunelab.io import atomic_write_text
from tunelab.run import read_run_config
from tunelab.run_config import RunConfig

FORMATS = ("gguf", "hf")


@dataclass(frozen=True)
class Exported:
    path: Path
    bytes: int
    modelfile: Path | None = None


def export_run(run_dir: str | Path, output: str | Path, *, format: str = "gguf",
               dtype: str = "f32", ollama_dir: str | Path | None = None,
               overwrite: bool = False, progress: bool = False) -> Exported:  # fmt: skip
    """Export the run at `run_dir` to `output` (a .gguf file, or a folder for `hf`)."""
    run_dir, output = Path(run_dir), Path(output)
    cfg = read_run_config(run_dir)
    if format not in FORMATS:
        raise TunelabError(f"export: format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "hf":
        if ollama_dir is not None or dtype != "f32":
            raise TunelabError("export: --ollama and --dtype apply to --format gguf only")
        merge_run(run_dir, output)
        return Exported(output, sum(p.stat().st_size for p in output.rglob("*") if p.is_file()))
    modelfile = _check_gguf_export(cfg, output, dtype, ollama_dir, overwrite)
    model, tokenizer, _ = merged_model(run_dir)
    metadata = {"method": cfg.method.name, "run": run_dir.resolve().name,
                "base_model": cfg.model.name}  # fmt: skip
    pre = pre_tokenizer_name(cfg.model.name, tokenizer)
    write_gguf(model, tokenizer, metadata, output, dtype=dtype, pre=pre, progress=progress)
    if modelfile is not None:
        atomic_write_text(modelfile, modelfile_text(output, modelfile.parent, cfg, tokenizer))
    return Exported(output, output.stat().st_size, modelfile)


def _check_gguf_export(cfg: RunConfig, output: Path, dtype: str, ollama_dir, overwrite: bool):
    """Every refusal that needs no model; returns the Modelfile path (or None)."""
    if dtype not in DTYPES:
        raise TunelabError(f"export: dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    check_mergeable(cfg)
    _check_architecture(cfg.model.name)
    check_gguf_output(output, overwrite)
    if ollama_dir is None:
        return None
    modelfile = Path(ollama_dir) / "Modelfile"
    if Path(ollama_dir).is_file():
        raise TunelabError(f"export: --ollama {ollama_dir} is a file; give a folder")
    if modelfile.exists() and not overwrite:
        raise TunelabError(f"export: {modelfile} exists; pass --overwrite to replace it")
    return modelfile


def _check_architecture(model_name: str) -> None:
    """Refuse an unsupported architecture from the base model's config, before loading it."""
    if model_name.startswith("random:"):
        arch = model_name.removeprefix("random:")
        if arch not in LAYOUTS:
            raise TunelabError(
                f"export: architecture {arch!r} has no GGUF export here; "
                f"supported: {', '.join(LAYOUTS)}"
            )
        return
    from transformers import AutoConfig

    from tunelab.models import resolve_model_dir

    layout_of(AutoConfig.from_pretrained(resolve_model_dir(model_name)))
