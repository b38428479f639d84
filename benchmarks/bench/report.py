"""Figures → the markdown table (``results/latest.md``) and the chart (``results/latest.png``).

Each figure is the median of its runs with the min and max beside it. A ratio compares a
system with the best system *of the same run* (the median of those per-run ratios), so a
machine that was busier during one run does not tilt the comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .util import median

Value = float | str | None      # a figure, "failed: …", or not measured


@dataclass
class Metric:
    key: str
    section: str
    title: str
    unit: str
    higher: bool                  # True when more is better (rates), False for latencies
    values: dict[str, list[Value]] = field(default_factory=dict)
    ratios: bool = True

    def add(self, system: str, run: int, runs: int, value: Value) -> None:
        row = self.values.setdefault(system, [None] * runs)
        row[run] = value

    def numbers(self, system: str) -> list[float]:
        return [v for v in self.values.get(system, []) if isinstance(v, float)]

    def failure(self, system: str) -> str | None:
        for v in self.values.get(system, []):
            if isinstance(v, str):
                return v
        return None

    def best_in_run(self, run: int, among: Iterable[str]) -> float | None:
        found = [row[run] for name, row in self.values.items() if name in among and isinstance(row[run], float)]
        if not found:
            return None
        return max(found) if self.higher else min(found)   # type: ignore[type-var]

    def ratio(self, system: str, among: Iterable[str]) -> float | None:
        """Median over runs of value / best value of that run among ``among``."""
        among = list(among)
        per_run = []
        for run, value in enumerate(self.values.get(system, [])):
            best = self.best_in_run(run, among)
            if isinstance(value, float) and best:
                per_run.append(value / best)
        return median(per_run) if per_run else None


def fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "–"
    if unit == "ms":
        return f"{value:.1f}" if value < 100 else f"{value:,.0f}"
    if unit == "µs":
        return f"{value:.1f}" if value < 10 else f"{value:,.0f}"
    if unit == "MiB":
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def metric_table(metric: Metric, order: Sequence[str], peers_only: Sequence[str]) -> list[str]:
    lines = [f"| system | median {metric.unit} | min | max |" + (" × best |" if metric.ratios else ""),
             "|---|---:|---:|---:|" + ("---:|" if metric.ratios else "")]
    among = [name for name in order if name in metric.values]
    for name in order:
        if name not in metric.values:
            continue
        nums = metric.numbers(name)
        if not nums:
            reason = metric.failure(name) or "not measured"
            lines.append(f"| {name} | {reason} | | |" + (" |" if metric.ratios else ""))
            continue
        cells = [fmt(median(nums), metric.unit), fmt(min(nums), metric.unit), fmt(max(nums), metric.unit)]
        if len(nums) < len(metric.values[name]) and metric.failure(name):
            cells[0] += f" ({len(nums)} of {len(metric.values[name])} runs; {metric.failure(name)})"
        row = f"| {name} | " + " | ".join(cells) + " |"
        if metric.ratios:
            ratio = metric.ratio(name, among)
            row += f" {ratio:.2f} |" if ratio is not None else " |"
        lines.append(row)
    return lines


def parts_table(parts: Sequence[Metric], names: Sequence[str], order: Sequence[str]) -> list[str]:
    """One row per system: the median of each part (metrics of the same runs) and their sum."""
    lines = ["| system | " + " | ".join(names) + " | total |", "|---|" + "---:|" * (len(names) + 1)]
    for system in order:
        if not any(system in part.values for part in parts):
            continue
        numbers = [part.numbers(system) for part in parts]
        if not all(numbers):
            failure = next(filter(None, (part.failure(system) for part in parts)), None)
            lines.append(f"| {system} | {failure or 'not measured'} |" + " |" * len(names))
            continue
        meds = [median(values) for values in numbers]
        lines.append(f"| {system} | " + " | ".join(fmt(m, parts[0].unit) for m in meds)
                     + f" | {fmt(sum(meds), parts[0].unit)} |")
    return lines


def tq_ratios(metrics: Sequence[Metric], tq_names: Sequence[str], peer_names: Sequence[str]) -> list[str]:
    """tqueues ÷ the best other system, per workload (median of the per-run ratios)."""
    lines = ["| workload | " + " | ".join(f"{n} ÷ best peer" for n in tq_names) + " | best peer (median) |",
             "|---|" + "---:|" * len(tq_names) + "---|"]
    for metric in metrics:
        if not metric.ratios:
            continue
        cells = []
        for tq in tq_names:
            per_run = []
            for run, value in enumerate(metric.values.get(tq, [])):
                best = metric.best_in_run(run, peer_names)
                if isinstance(value, float) and best:
                    per_run.append(value / best)
            cells.append(f"{median(per_run):.2f}" if per_run else "–")
        best_name, best_value = None, None
        for name in peer_names:
            nums = metric.numbers(name)
            if nums:
                m = median(nums)
                if best_value is None or (m > best_value if metric.higher else m < best_value):
                    best_name, best_value = name, m
        best = f"{best_name} ({fmt(best_value, metric.unit)} {metric.unit})" if best_name and best_value else "–"
        lines.append(f"| {metric.title} | " + " | ".join(cells) + f" | {best} |")
    return lines


def chart(metrics: Sequence[Metric], order: Sequence[str], path: Path, title: str) -> None:
    """Horizontal bars, one panel per comparable metric, min–max as error bars; tqueues highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in metrics if m.ratios and any(m.numbers(n) for n in order)]
    if not shown:
        return
    cols = 2
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.3 * rows + 0.8), squeeze=False)
    for ax, metric in zip([a for row in axes for a in row], shown):
        names = [n for n in order if metric.numbers(n)]
        meds = [median(metric.numbers(n)) for n in names]
        lows = [m - min(metric.numbers(n)) for n, m in zip(names, meds)]
        highs = [max(metric.numbers(n)) - m for n, m in zip(names, meds)]
        colors = ["#d62728" if n.startswith("tqueues") else "#1f77b4" for n in names]
        y = list(range(len(names)))
        ax.barh(y, meds, xerr=[lows, highs], color=colors, capsize=3)
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        better = "higher is better" if metric.higher else "lower is better"
        ax.set_title(f"{metric.title}\n({metric.unit}, {better})", fontsize=9)
        if meds and max(meds) / max(min(meds), 1e-9) > 50:
            ax.set_xscale("log")
        ax.tick_params(axis="x", labelsize=8)
        for yy, value, high in zip(y, meds, highs):
            ax.text(value + high, yy, "  " + fmt(value, metric.unit), va="center", fontsize=7)
        ax.set_xlim(right=ax.get_xlim()[1] * (3.0 if ax.get_xscale() == "log" else 1.12))
    for ax in [a for row in axes for a in row][len(shown):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plain(value: Any) -> Any:
    """JSON-safe copy (NaN → None)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
