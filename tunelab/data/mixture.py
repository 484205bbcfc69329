"""Mixing tasks: how many training examples each task contributes, and the report of it.

Three rules, all on the tasks' sizes (training rows) after a per-task cap:
  proportional  rate_i ∝ min(n_i, cap)              FLAN's examples-proportional mixing (Wei et
                                                    al. 2022): no large task drowns the rest
  temperature   rate_i ∝ min(n_i, cap) ** (1 / T)   T5's temperature-scaled mixing (Raffel et
                                                    al. 2020, https://arxiv.org/abs/1910.10683):
                                                    T > 1 flattens towards equal shares
  weights       rate_i ∝ weight_i                   explicit
Replay tasks stay out of those rates and get `replay_share` of the whole mixture, split among
them in proportion to their capped sizes. Counts are whole numbers that sum exactly to the
mixture size (largest-remainder rounding, ties broken by task order), so the arithmetic is
deterministic and testable on hand-made sizes. A count above a task's rows repeats its rows
(each repeat drawing a new template); below, a seeded subset is used.
"""

from __future__ import annotations

import math
import random

from tunelab.task_config import MixtureConfig


def capped(size: int, cap: int | None) -> int:
    return min(size, cap) if cap is not None else size


def mixture_rates(
    sizes: dict[str, int], cfg: MixtureConfig, weights: dict[str, float] | None = None
) -> dict[str, float]:
    """Each task's share of the non-replay part of the mixture (they sum to 1)."""
    if cfg.strategy == "weights":
        if weights is None or set(weights) != set(sizes):
            raise ValueError("mixture.strategy=weights needs a weight for every task")
        raw = dict(weights)
    elif cfg.strategy == "temperature":
        raw = {
            name: capped(size, cfg.cap) ** (1.0 / cfg.temperature) for name, size in sizes.items()
        }
    else:
        raw = {name: float(capped(size, cfg.cap)) for name, size in sizes.items()}
    total = sum(raw.values())
    if total <= 0:
        raise ValueError("the tasks to mix hold no examples")
    return {name: value / total for name, value in raw.items()}


def apportion(total: int, rates: dict[str, float]) -> dict[str, int]:
    """Whole counts summing to `total`, as close to total * rate as possible (largest remainder)."""
    exact = {name: total * rate for name, rate in rates.items()}
    counts = {name: math.floor(value) for name, value in exact.items()}
    left = total - sum(counts.values())
    order = sorted(rates, key=lambda name: -(exact[name] - counts[name]))  # stable: task order
    for name in order[:left]:
        counts[name] += 1
    return counts


def mixture_counts(
    sizes: dict[str, int],
    cfg: MixtureConfig,
    *,
    replay: set[str] = frozenset(),
    weights: dict[str, float] | None = None,
    limit: int | None = None,
) -> dict[str, int]:
    """Training examples per task. `sizes`: training rows per task (held-out tasks excluded);
    `limit` caps the whole mixture (e.g. data.max_train_examples)."""
    main = {name: size for name, size in sizes.items() if name not in replay}
    replayed = {name: size for name, size in sizes.items() if name in replay}
    share = cfg.replay_share if replayed else 0.0
    default = sum(capped(size, cfg.cap) for size in main.values())
    total = cfg.total or round(default / (1.0 - share))
    if limit is not None:
        total = min(total, limit)
    replay_total = round(total * share)
    main_weights = {name: weights[name] for name in main} if weights else None
    counts = apportion(total - replay_total, mixture_rates(main, cfg, main_weights))
    if replayed:
        proportional = cfg.model_copy(update={"strategy": "proportional"})
        counts.update(apportion(replay_total, mixture_rates(replayed, proportional)))
    return {name: counts[name] for name in sizes}


def draw_rows(rows: int, count: int, rng: random.Random) -> list[int]:
    """`count` row indices: whole shuffled passes over the rows, then a shuffled part pass."""
    if rows <= 0:
        return []
    order: list[int] = []
    while len(order) < count:
        order += rng.sample(range(rows), rows)
    return order[:count]


def mixture_report(
    counts: dict[str, int],
    rows: dict[str, int],
    tokens: dict[str, int],
    roles: dict[str, str],
    eval_rows: dict[str, int],
) -> list[dict]:
    """One record per task: rows, examples and tokens in the mixture and their shares."""
    examples_total = max(sum(counts.values()), 1)
    tokens_total = max(sum(tokens.values()), 1)
    return [
        {
            "task": name,
            "role": roles[name],
            "train_rows": rows.get(name, 0),
            "eval_rows": eval_rows.get(name, 0),
            "examples": counts.get(name, 0),
            "example_share": counts.get(name, 0) / examples_total,
            "tokens": tokens.get(name, 0),
            "token_share": tokens.get(name, 0) / tokens_total,
        }
        for name in roles
    ]


def format_report(report: list[dict]) -> str:
    """The mixture as a small text table (printed before training)."""
    lines = [f"{'task':<24} {'role':<9} {'rows':>6} {'examples':>8} {'ex%':>6} {'tokens':>8} "
             f"{'tok%':>6} {'eval':>5}"]  # fmt: skip
    for row in report:
        lines.append(
            f"{row['task'][:24]:<24} {row['role']:<9} {row['train_rows']:>6} "
            f"{row['examples']:>8} {100 * row['example_share']:>5.1f}% {row['tokens']:>8} "
            f"{100 * row['token_share']:>5.1f}% {row['eval_rows']:>5}"
        )
    return "\n".join(lines)
