"""`tunelab merge` / `tunelab export --format hf`: fold a run's weight update into the base and
write a plain transformers model directory (loads with `AutoModelForCausalLM.from_pretrained`, no
tunelab or PEFT needed).

Methods whose update is a change of weights merge (LoRA, DoRA, IA³, BitFit, importance, full,
ULMFiT). Methods that add inputs or modules instead (prompt, prefix, p-tuning, bottleneck
adapters) raise `MergeNotSupported` with the reason, before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import MergeNotSupported, TunelabError
from tunelab.io import atomic_dir
from tunelab.methods import get_method
from tunelab.run import load_run, read_run_config
from tunelab.run_config import RunConfig


def merge_run(run_dir: str | Path, output: str | Path) -> Path:
    """Write the merged model and the run's tokenizer to `output`; return its path.

    `output` is written whole or not at all; an earlier merged model there is replaced.
    """
    check_mergeable(read_run_config(run_dir))
    check_output(Path(run_dir), Path(output))
    merged, tokenizer, _ = merged_model(run_dir)
    with atomic_dir(output) as scratch:
        merged.save_pretrained(str(scratch))
        tokenizer.save_pretrained(str(scratch))
    return Path(output)


def check_mergeable(cfg: RunConfig) -> None:
    """Raise `MergeNotSupported` (with the method's reason) before any model is loaded, for the
    methods that never merge; the others may still refuse in `merge` for what they trained."""
    method = get_method(cfg.method.name)
    if not method.mergeable:
        method.merge(None, cfg.method)  # raises at once with the method's reason


def merged_model(run_dir: str | Path):
    """(merged transformers model in eval mode, the run's tokenizer, the run's config)."""
    cfg = read_run_config(run_dir)
    model, tokenizer = load_run(run_dir)
    merged = get_method(cfg.method.name).merge(model, cfg.method)  # may raise MergeNotSupported
    return merged.eval(), tokenizer, cfg


def check_output(run_dir: Path, output: Path) -> None:
    """Refuse an `output` whose replacement would delete something that is not a model: the run
    itself, a folder holding it, or a non-empty folder without a config.json."""
    run, target = run_dir.resolve(), output.resolve()
    if target == run or target in run.parents:
        raise TunelabError(f"merge: output {output} would replace the run {run_dir} itself")
    if target.is_file():
        raise TunelabError(f"merge: output {output} is a file; give a folder path")
    if target.is_dir() and any(target.iterdir()) and not (target / "config.json").is_file():
        raise TunelabError(
            f"merge: output {output} is a non-empty folder that holds no model; "
            "give a new path (an earlier merged model there would be replaced)"
        )


__all__ = ["MergeNotSupported", "check_output", "merge_run", "merged_model"]
