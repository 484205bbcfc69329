"""A comparison repeated over seeds: each variant's runs, one per seed, folded into one row.

With `seeds: [0, 1, 2]` every variant trains once per seed (`train.seed`: the method's
initialisation and the batch order; the data, the eval split and the decoding stay the same,
see compare.config), in OUTPUT/runs/<variant>/seed-<s>/. Resume and failures work per run.

Per variant, over the seeds that finished (n):

- the quality metric's **mean**, its **sample standard deviation** (n - 1 in the denominator)
  and a **95 % t-interval**: mean ± t(0.975, n - 1) · sd / √n. With 3 seeds t(0.975, 2) = 4.303,
  so the half-width is 2.48 sd: three seeds bound the mean only loosely. One seed has no sd
  and no interval. The same for every metric of `after` and for seq-rep-4;
- the per-seed values, each with its own bootstrap interval over the eval sentences where the
  run has one (summary.json's `generation`; every per-seed row is kept under `runs`);
- every other numeric column (trainable parameters, time, tokens/s, memory, forgetting,
  inference cost, examples seen) as the mean over the seeds; winners and Pareto fronts are
  chosen on these means.

Which variants differ: two variants are ranked only where their 95 % intervals do not overlap;
everything else is reported as not separated. Non-overlap is a conservative test (two means
can differ significantly while their intervals still overlap), so "not separated" means "not
shown by three seeds", not "equal". The base model is scored once (it has no seed): a variant
whose interval lies wholly above the base's score (below, for a lower-is-better metric) has a
gain over the base across seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from tunelab.compare.config import CompareConfig
from tunelab.run_config import RunConfig, load_config

CONFIDENCE = 0.95
TEXT_STATS = ("seq-rep-4", "distinct-2", "length_ratio")  # from summary.json's generation.after
KEPT_FROM_FIRST = ("variant", "method", "run_dir")  # the first finished seed's, for the report


@dataclass(frozen=True)
class RunKey:
    """One run of a comparison: a variant, and its seed (None without `seeds`)."""

    variant: str
    seed: int | None = None

    @property
    def label(self) -> str:
        return self.variant if self.seed is None else f"{self.variant} seed {self.seed}"


def seeded_runs(cfg: CompareConfig, configs: dict[str, RunConfig]) -> dict[RunKey, RunConfig]:
    """Every run of the comparison: each variant's config once, or once per seed with that
    seed as train.seed and its own run directory."""
    if cfg.seeds is None:
        return {RunKey(name): run for name, run in configs.items()}
    runs = {}
    for name, run in configs.items():
        for seed in cfg.seeds:
            raw = run.to_dict()
            raw["train"]["seed"] = seed
            raw["output_dir"] = str(cfg.run_dir(name, seed))
            runs[RunKey(name, seed)] = load_config(raw)
    return runs


# --- statistics ---------------------------------------------------------------------------


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with an integer `df`, in closed form (Abramowitz & Stegun
    26.7.3 and 26.7.4: a finite series in cos θ, θ = atan(t / √df))."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2:  # odd: (2/π)(θ + sin θ cos θ (1 + 2/3 cos² θ + ...)), no series for df = 1
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= cos2 * (2 * k) / (2 * k + 1)
            total += term
        central = 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    else:  # even: sin θ (1 + 1/2 cos² θ + 1·3/(2·4) cos⁴ θ + ...)
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            total += term
        central = math.sin(theta) * total
    return 0.5 + central / 2


def t_quantile(probability: float, df: int) -> float:
    """The t such that P(T <= t) = `probability` (> 0.5), by bisection on t_cdf."""
    low, high = 0.0, 1.0
    while t_cdf(high, df) < probability:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, df) < probability else (low, middle)
    return (low + high) / 2


def summarise(values: list[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """{n, mean, sd, low, high, t}: sd the sample standard deviation, [low, high] the
    two-sided t-interval of the mean; sd and the interval are None for a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "low": None, "high": None, "t": None}
    sd = math.sqrt(sum((value - mean) ** 2 for value in values) / (n - 1))
    t = t_quantile(1 - (1 - confidence) / 2, n - 1)
    half = t * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "t": t}


# --- one row per variant ------------------------------------------------------------------


def aggregate_rows(rows: list[dict[str, Any]], quality: str,
                   confidence: float = CONFIDENCE) -> list[dict]:  # fmt: skip
    """One row per variant (in order) from its per-seed rows: see the module docstring."""
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["variant"], []).append(row)
    return [_variant_row(runs, quality, confidence) for runs in grouped.values()]


def _variant_row(runs: list[dict[str, Any]], quality: str, confidence: float) -> dict[str, Any]:
    finished = [run for run in runs if run["status"] == "finished"]
    failed = {run["seed"]: run.get("error") for run in runs if run["status"] != "finished"}
    errors = "; ".join(f"seed {seed}: {error}" for seed, error in failed.items()) or None
    head = finished[0] if finished else runs[0]
    if not finished:
        return {**{key: head[key] for key in KEPT_FROM_FIRST}, "status": "failed",
                "error": errors, "skipped": False, "seeds": [], "runs": runs}  # fmt: skip
    row = {key: mean_tree([run.get(key) for run in finished]) for key in _keys(finished)}
    row.update({key: head[key] for key in KEPT_FROM_FIRST})
    row.update(status="finished", error=errors, skipped=all(run["skipped"] for run in runs))
    row.update(seeds=[run["seed"] for run in finished], failed_seeds=failed, runs=runs)
    row.pop("generation", None)  # intervals do not average: each seed's stays under `runs`
    row.pop("seed", None)
    row["seed_stats"] = _seed_stats(finished, quality, confidence)
    stats = row["seed_stats"].get("quality", {})
    row["quality_sd"] = stats.get("sd")
    row["quality_interval"] = _interval(stats, confidence)
    return row


def _keys(rows: list[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return list(keys)


def mean_tree(values: list[Any]) -> Any:
    """The mean of numbers, key by key through nested dicts (a count equal in every seed stays
    that int); for anything else (text, flags, lists) the first value. Missing values (None)
    are left out of a mean."""
    present = [value for value in values if value is not None]
    if not present:
        return None
    if all(_is_number(value) for value in present):
        if all(isinstance(value, int) for value in present) and len(set(present)) == 1:
            return present[0]  # a count every seed shares (trainable parameters) stays a count
        return sum(present) / len(present)
    if all(isinstance(value, dict) for value in present):
        keys = _keys(present)
        return {key: mean_tree([value.get(key) for value in present]) for key in keys}
    return present[0]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _seed_stats(runs: list[dict[str, Any]], quality: str, confidence: float) -> dict[str, dict]:
    """{"quality" | metric of `after` | text statistic: summarise(...) + per-seed values}."""
    series = {"quality": [(run["seed"], run.get("quality")) for run in runs]}
    for metric in _keys([run.get("after") or {} for run in runs]):
        series[metric] = [(run["seed"], (run.get("after") or {}).get(metric)) for run in runs]
    for stat in TEXT_STATS:
        series[stat] = [(run["seed"], _text_stat(run, stat)) for run in runs]
    stats = {}
    for name, pairs in series.items():
        known = [(seed, value) for seed, value in pairs if _is_number(value)]
        if known:
            stats[name] = {**summarise([value for _, value in known], confidence),
                           "values": {str(seed): value for seed, value in known}}  # fmt: skip
    for run in runs:  # each seed's own bootstrap interval over the eval sentences
        interval = _bootstrap(run, quality)
        if interval is not None and "quality" in stats:
            stats["quality"].setdefault("bootstrap", {})[str(run["seed"])] = interval
    return stats


def _text_stat(run: dict[str, Any], name: str) -> float | None:
    return ((run.get("generation") or {}).get("after") or {}).get(name)


def _bootstrap(run: dict[str, Any], quality: str) -> dict[str, float] | None:
    """{score, low, high}: the run's bootstrap interval of the quality metric, where
    summary.json has one (chrF++, chrF, BLEU of the main eval; not a TASK/METRIC)."""
    scores = ((run.get("generation") or {}).get("after") or {}).get(quality)
    return dict(scores) if isinstance(scores, dict) and "low" in scores else None


def _interval(stats: dict[str, Any], confidence: float) -> dict[str, Any] | None:
    if stats.get("low") is None:
        return None
    return {"low": stats["low"], "high": stats["high"], "confidence": confidence,
            "method": "t", "n": stats["n"]}  # fmt: skip


# --- which variants separate --------------------------------------------------------------


def separation(rows: list[dict[str, Any]], *, higher_is_better: bool,
               confidence: float = CONFIDENCE) -> dict[str, Any]:  # fmt: skip
    """Pairs of variants whose quality intervals do not overlap ([better, worse], best mean
    first), the pairs whose intervals overlap, and each variant against its base score."""
    done = [row for row in rows if row["status"] == "finished" and row.get("quality") is not None]
    scored = [row for row in done if row.get("quality_interval")]
    sign = 1.0 if higher_is_better else -1.0
    order = sorted(scored, key=lambda row: -sign * row["quality"])
    ranked, overlapping = [], []
    for first, second in combinations(order, 2):
        a, b = first["quality_interval"], second["quality_interval"]
        apart = a["low"] > b["high"] or b["low"] > a["high"]
        (ranked if apart else overlapping).append([first["variant"], second["variant"]])
    versus: dict[str, list[str]] = {"better": [], "worse": [], "not_separated": []}
    for row in order:
        before, interval = row.get("quality_before"), row["quality_interval"]
        if before is None:
            continue
        above, below = interval["low"] > before, interval["high"] < before
        if above or below:
            versus["better" if above == higher_is_better else "worse"].append(row["variant"])
        else:
            versus["not_separated"].append(row["variant"])
    lacking = [row["variant"] for row in done if not row.get("quality_interval")]
    return {
        "confidence": confidence,
        "interval": "t",
        "ranked": ranked,
        "not_separated": overlapping,
        "versus_base": versus,
        "no_interval": lacking,
    }


def seed_section(cfg: CompareConfig, rows: list[dict[str, Any]], *, higher_is_better: bool) -> dict:
    """results.json's `seeds`: the seeds, how intervals are computed, what separates."""
    return {
        "seeds": list(cfg.seeds or []),
        "confidence": CONFIDENCE,
        "interval": "t-interval of the mean over seeds: mean ± t(0.975, n-1) · sd / √n",
        "separation": separation(rows, higher_is_better=higher_is_better),
    }


def separation_sentences(results: dict[str, Any]) -> list[str]:
    """The separation as sentences: a ranking only where the intervals separate."""
    section = results.get("seeds")
    if not section:
        return []
    sep, quality = section["separation"], results["quality_metric"]
    share = f"{100 * sep['confidence']:g} %"
    pairs = ", ".join(f"{better} > {worse}" for better, worse in sep["ranked"])
    lines = [f"Ranked where the {share} intervals of {quality} do not overlap (> : better): {pairs}"
             if pairs else f"No two variants' {share} intervals of {quality} separate: "
             "no ranking is stated."]  # fmt: skip
    if sep["not_separated"]:
        overlap = ", ".join(f"{first} ~ {second}" for first, second in sep["not_separated"])
        lines.append(f"Not separated (intervals overlap, no ranking stated): {overlap}")
    wording = {"better": "Better than the base model across seeds (interval clear of its score)",
               "worse": "Worse than the base model across seeds",
               "not_separated": "Not separated from the base model"}  # fmt: skip
    for key, text in wording.items():
        if sep["versus_base"][key]:
            lines.append(f"{text}: {', '.join(sep['versus_base'][key])}")
    if sep["no_interval"]:
        lines.append(f"One seed finished, so no interval: {', '.join(sep['no_interval'])}")
    return lines


# --- the table across seeds ---------------------------------------------------------------


def seed_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): per variant the seeds finished, the quality's mean ± sd, its interval,
    each seed's value (with its bootstrap interval over the eval sentences where there is
    one), then every other metric and seq-rep-4 as mean ± sd. Empty without seeds."""
    if not results.get("seeds"):
        return [], []
    quality = results["quality_metric"]
    rows = [r for r in results["methods"] if r.get("seed_stats") or r["status"] != "finished"]
    shown = {"quality", quality}  # the quality metric is the third column already
    others = [m for m in _keys([r.get("seed_stats", {}) for r in rows]) if m not in shown]
    share = f"{100 * results['seeds']['confidence']:g} %"
    headers = ["variant", "seeds", f"{quality} mean ± sd", f"{share} interval (t)",
               f"{quality} per seed [bootstrap {share}]", *others]  # fmt: skip
    cells = []
    for row in rows:
        total = len(row.get("runs", []))
        if row["status"] != "finished":
            cells.append([row["variant"], f"0/{total}"] + [""] * (len(headers) - 2))
            continue
        stats = row["seed_stats"]
        interval = row.get("quality_interval")
        span = "-" if interval is None else f"[{_fmt(interval['low'])}, {_fmt(interval['high'])}]"
        cells.append([row["variant"], f"{len(row['seeds'])}/{total}",
                      _mean_sd(stats.get("quality")), span, _per_seed(stats.get("quality")),
                      *(_mean_sd(stats.get(metric)) for metric in others)])  # fmt: skip
    return headers, cells


def table_notes(results: dict[str, Any]) -> str:
    seeds = ", ".join(str(seed) for seed in results["seeds"]["seeds"])
    return (
        f"Seeds {seeds} (train.seed: the method's initialisation and the batch order; the same "
        "training examples and eval rows). Interval: mean ± t(0.975, n−1)·sd/√n over the seeds "
        "that finished; per-seed brackets: that run's bootstrap interval over the eval "
        "sentences. Other columns of the main table are means over the seeds; the charts and "
        "the outputs side by side show the first seed."
    )


def markdown_section(results: dict[str, Any]) -> list[str]:
    headers, rows = seed_table(results)
    if not headers:
        return []
    lines = ["", "## Across seeds", "", "| " + " | ".join(headers) + " |",
             "|" + "---|" * len(headers)]  # fmt: skip
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    lines += ["", table_notes(results), ""]
    return lines + [f"- {sentence}" for sentence in separation_sentences(results)]


def _mean_sd(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "-"
    return _fmt(stats["mean"]) + ("" if stats["sd"] is None else f" ± {stats['sd']:.2g}")


def _per_seed(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "-"
    boot = stats.get("bootstrap", {})
    parts = []
    for seed, value in stats["values"].items():
        own = boot.get(seed)
        bracket = "" if own is None else f" [{_fmt(own['low'])}, {_fmt(own['high'])}]"
        parts.append(f"s{seed}: {_fmt(value)}{bracket}")
    return "; ".join(parts)


def _fmt(value: float) -> str:
    return f"{value:.4g}"
