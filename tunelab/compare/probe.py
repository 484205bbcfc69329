"""The forgetting probe now lives in `tunelab.evaluate.probe` (the training loop uses it for
every run); this name stays so compare's imports keep working."""

from tunelab.evaluate.probe import BATCH_ROWS, PROBE_TEXT, WINDOW, probe_batches, probe_perplexity

__all__ = ["BATCH_ROWS", "PROBE_TEXT", "WINDOW", "probe_batches", "probe_perplexity"]
