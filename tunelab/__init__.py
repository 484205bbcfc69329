"""tunelab: fine-tune language models on your own data, offline, with every major method
behind one interface — and measure what each method bought.

    from tunelab import train, load_run
    result = train("examples/demo.yaml")
    model, tokenizer = load_run(result.run_dir)
"""

from __future__ import annotations

__version__ = "0.1.0"


def train(config, **kwargs):
    """Fine-tune as `config` (a YAML path, dict or RunConfig) says. See tunelab.training.loop."""
    from tunelab.training.loop import train as run_training

    return run_training(config, **kwargs)


def load_run(run_dir, **kwargs):
    """(model, tokenizer): the base model with a run's trained weights applied."""
    from tunelab.run import load_run as load

    return load(run_dir, **kwargs)


__all__ = ["train", "load_run", "__version__"]
