"""τ against image tokens per image: the report's plot of one method across target settings that
differ in how many tokens an image becomes (e.g. the testbed at 64 and at 576; docs/metrics.md,
"Image tokens per image").

A record's `image_tokens` lists the tokens of each image of its prompt. A method's setting in a run
is the mean over the images of its records; it is unknown (None) when a record of the method lacks
the field (written before it existed) or no record has an image, and an unknown setting is left
out of the plot. The plot is drawn only when some method was measured at two settings or more.
"""

from __future__ import annotations

from vispec_bench.results.figures import save_figure

PLOT = "tau_vs_image_tokens.png"


def image_tokens_per_image(records: list[dict]) -> dict[str, float | None]:
    """{method: mean image tokens per image over its records' images, or None when unknown}."""
    per_method: dict[str, list[int] | None] = {}
    for record in records:
        known = per_method.setdefault(record["method"], [])
        tokens = record.get("image_tokens")
        if known is None or tokens is None:
            per_method[record["method"]] = None
        else:
            known.extend(tokens)
    return {method: (sum(tokens) / len(tokens) if tokens else None) for method, tokens in per_method.items()}


def points(runs: list[tuple[dict, dict]]) -> dict[tuple, list[tuple[float, dict]]]:
    """{(method, suite, prompt mode): [(image tokens per image, that method's figures in the run)]}
    for every speculative method of known setting; AR (τ = 1) is the plot's reference line."""
    series: dict[tuple, list[tuple[float, dict]]] = {}
    for manifest, summary in runs:
        settings = summary.get("image_tokens_per_image") or {}
        config = manifest["config"]
        for method, figures in summary["methods"].items():
            if method != "ar" and settings.get(method) is not None:
                key = (method, config["suite"], config.get("prompt_mode"))
                series.setdefault(key, []).append((settings[method], figures))
    return series


def wanted(series: dict[tuple, list]) -> bool:
    """Some method was measured at two or more numbers of image tokens per image."""
    return any(len({x for x, _ in found}) > 1 for found in series.values())


HIGHLIGHTED = ("eagle2", "vispec")  # the pair the plot is asked for; the other methods are drawn faint


def plot(series: dict[tuple, list[tuple[float, dict]]], path) -> None:
    """One line per method (with its suite and prompt mode where the report holds several):
    τ with its 95 % bootstrap interval at each setting; log-2 x axis when the settings span 4x or more.
    EAGLE-2 and ViSpec stand out; the lines are nudged apart sideways so their error bars do not hide
    each other; a common sample count goes in the title instead of beside every point."""
    import matplotlib.pyplot as plt

    several = len({key[1:] for key in series}) > 1
    settings = sorted({x for found in series.values() for x, _ in found})
    counts = {figures["num_samples"] for found in series.values() for _, figures in found}
    log = len(settings) > 1 and settings[-1] >= 4 * settings[0]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for index, ((method, suite, mode), found) in enumerate(series.items()):
        found = sorted(found, key=lambda item: item[0])
        nudge = (index - (len(series) - 1) / 2) * 0.025  # in log2 units, or a fraction of x when linear
        xs = [x * 2 ** nudge if log else x * (1 + nudge / 4) for x, _ in found]
        taus = [f["mean_accepted_length"] for _, f in found]
        below = [t - f["mean_accepted_length_ci_low"] if f.get("mean_accepted_length_ci_low") is not None else 0
                 for t, (_, f) in zip(taus, found)]
        above = [f["mean_accepted_length_ci_high"] - t if f.get("mean_accepted_length_ci_high") is not None else 0
                 for t, (_, f) in zip(taus, found)]
        label = method + (f" ({suite}, {mode})" if several else "")
        style = ({"linewidth": 2.4, "zorder": 3} if method in HIGHLIGHTED else {"linewidth": 1, "alpha": 0.45})
        ax.errorbar(xs, taus, yerr=[below, above], marker="o", capsize=3, label=label, **style)
        if len(counts) > 1:
            for x, tau, (_, figures) in zip(xs, taus, found):
                ax.annotate(f"n={figures['num_samples']}", (x, tau), textcoords="offset points", xytext=(4, -10),
                            fontsize=7)
    if log:
        ax.set_xscale("log", base=2)
    ax.set_xticks(settings, [f"{x:g}" for x in settings])
    ax.minorticks_off()
    ax.margins(x=0.12)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("image tokens per image" + (" (log scale)" if log else ""))
    ax.set_ylabel("tau (mean accepted length)")
    ax.set_title("tau against image tokens per image" + (f" (n = {counts.pop()} samples per point)"
                                                          if len(counts) == 1 else ""))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, path)


def draw(runs: list[tuple[dict, dict]], out) -> list[tuple[str, str]]:
    """[(file, caption)] of the plot drawn into `out`, or [] when no method has two settings."""
    series = points(runs)
    if not wanted(series):
        return []
    plot(series, out / PLOT)
    return [(PLOT, caption(series))]


def caption(series: dict[tuple, list]) -> str:
    settings = sorted({x for found in series.values() for x, _ in found})
    return (f"τ against image tokens per image ({', '.join(f'{x:g}' for x in settings)}); one line per method; "
            "error bars: 95 % bootstrap interval over samples; n = samples")
