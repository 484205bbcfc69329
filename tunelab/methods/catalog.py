"""`tunelab methods`: every method with its paper and idea, and — given a model — the
trainable and total parameter counts it would have on that model."""

from __future__ import annotations

import torch
from rich.table import Table

from tunelab.config import ModelConfig
from tunelab.methods import METHODS, MethodContext
from tunelab.methods.base import count_parameters


def _calibration(model) -> MethodContext:
    """A tiny random batch, enough for methods that score parameters before training."""
    vocab = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, 16), generator=generator)

    def batches():
        yield {"input_ids": ids, "labels": ids.clone()}

    return MethodContext(calibration_batches=batches, total_steps=1)


def parameter_counts(model_name: str) -> dict[str, tuple[int, int]]:
    """method name -> (trainable, total) parameters on `model_name`."""
    from tunelab.models import load_model_and_tokenizer

    counts = {}
    for name, method in METHODS.items():
        model, _ = load_model_and_tokenizer(ModelConfig(name=model_name))
        applied = method.apply(model, method.Config(name=name), _calibration(model))
        method.on_step(applied, method.Config(name=name), 0, 1)
        if name == "ulmfit":  # every group trains by the end of the schedule
            applied.requires_grad_(True)
        counts[name] = count_parameters(applied)
    return counts


def methods_table(model_name: str | None = None) -> Table:
    counts = parameter_counts(model_name) if model_name else {}
    table = Table(title=f"methods{f' on {model_name}' if model_name else ''}")
    for column in ("method", "paper", "idea", "default lr", "mergeable"):
        table.add_column(column)
    if counts:
        table.add_column("trainable", justify="right")
        table.add_column("%", justify="right")
    for name, method in METHODS.items():
        row = [
            name,
            method.paper,
            method.idea,
            f"{method.default_lr:g}",
            "yes" if method.mergeable else "no",
        ]
        if counts:
            trainable, total = counts[name]
            row += [f"{trainable:,}", f"{100 * trainable / total:.3f}"]
        table.add_row(*row)
    return table
