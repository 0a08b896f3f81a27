"""The report's plot of the two speedups: each method on each engine against AR on its own
engine and against the run's fastest AR (vispec_bench/results/by_engine.py), with their 95 %
bootstrap intervals."""

from __future__ import annotations

from vispec_bench.results.figures import save_figure

SPEEDUPS = (("speedup_decode", "vs AR on its own engine", "#9ecae1"),
            ("speedup_decode_vs_best_ar", "vs the fastest AR of the run", "#3182bd"))


def series(rows: list[dict]) -> None:
    """row["_series"]: the method, with its engine where the rows hold more than one engine."""
    several = len({row.get("engine") or "eager" for row in rows}) > 1
    for row in rows:
        row["_series"] = f"{row['method']} ({row.get('engine') or 'eager'})" if several else row["method"]


def two_speedups_plot(rows: list[dict], path) -> None:
    """Per (run group, method, engine): both per-token decode speedups side by side."""
    import matplotlib.pyplot as plt

    groups = len({row["_label"] for row in rows}) > 1
    labels = [f"{row['method']}\n{row.get('engine') or 'eager'}" + (f"\n{row['_label']}" if groups else "")
              for row in rows]
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.5))
    top = 0.0
    for j, (field, name, color) in enumerate(SPEEDUPS):
        xs, ys, errors = [], [], [[], []]
        for i, row in enumerate(rows):
            if row.get(field) is None:
                continue
            xs.append(i + (j - 0.5) * width)
            ys.append(row[field])
            low, high = row.get(f"{field}_ci_low"), row.get(f"{field}_ci_high")
            errors[0].append(row[field] - low if low is not None else 0)
            errors[1].append(high - row[field] if high is not None else 0)
        bars = ax.bar(xs, ys, width, yerr=errors, capsize=3, label=name, color=color)
        ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=7, label_type="center")
        top = max([top] + [y + e for y, e in zip(ys, errors[1])])
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylim(0, top * 1.3 or 1)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("per-token decode speedup (x)")
    ax.set_title("Speedup against AR on the same engine and against the fastest AR")
    ax.legend(fontsize=8)
    save_figure(fig, path)
