"""`tunelab compare`: every method on the user's own data, with the same data, seed and
budget, measured side by side (trainable parameters, artifact size, training time and
throughput, peak memory, quality before/after, forgetting, inference cost), written as
results.json, results.md and a self-contained report.html.

config.py   the comparison config (base run config + methods + budget + overrides)
runner.py   compare(): one process per method, resume, failures recorded
worker.py   what runs inside each process (train, then measure)
measure.py  forgetting probe and inference timing; probe.py holds the probe text
results.py  rows, winners, Pareto fronts, Markdown; ranking.py the Pareto maths
report.py   report.html; progress.py the one progress view across all methods
"""

from tunelab.compare.config import CompareConfig, load_compare_config

__all__ = ["CompareConfig", "load_compare_config"]
