"""`tunelab compare`: every method, or any variants of one run config (a method, a learning
rate, a data setting, a template...), on the user's own data, with the same data, seed and
budget (steps, seconds, examples or tokens), measured side by side (trainable parameters,
artifact size, training time and throughput, peak memory, quality before/after, forgetting,
inference cost, outputs), written as results.json, results.md and a self-contained report.html.

config.py   the comparison config (base run config + methods/variants + budget + overrides)
            and each variant's resolved, validated run config
runner.py   compare(): one process per variant, resume, failures recorded
worker.py   what runs inside each process (train, then measure)
measure.py  forgetting probe and inference timing; probe.py holds the probe text
results.py  rows, winners, Pareto fronts, Markdown; ranking.py the Pareto maths
seeds.py    `seeds:`: one run per variant and seed, aggregated (mean, sd, t-interval), and
            which variants' intervals separate
samples.py  a few eval prompts with every variant's output side by side
report.py   report.html; progress.py the one progress view across all variants
"""

from tunelab.compare.config import CompareConfig, load_compare_config

__all__ = ["CompareConfig", "load_compare_config"]
