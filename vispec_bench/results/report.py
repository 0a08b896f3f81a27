"""`report`: runs -> index.md, a self-contained index.html, summary.csv and PNG plots.

Reads only run directories (manifest.json + records); summaries are recomputed from the
records with vispec_bench.results.metrics, so a report never trusts a stale summary.json. Runs of
several models, suites and dates combine into one report; each run's environment is listed.
The report keeps what it was made from: runs/<run_id>/manifest.json and records.jsonl.gz, so
`report <report>/runs --out <report>` re-derives every figure. Columns, their formats and
definitions come from the one column table (vispec_bench/results/columns.py).
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import time
from pathlib import Path

from vispec_bench.errors import MissingInputError
from vispec_bench.results import by_engine, differences, engine_plots, image_tokens_plot, metrics
from vispec_bench.results.columns import COLUMNS, csv_fields, csv_value, definitions, format_cell
from vispec_bench.results.figures import save_figure
from vispec_bench.results.records import MANIFEST, RunStore, write_json_atomic

TABLE = [c for c in COLUMNS if c.table]


def find_runs(paths: list[str], runs_root: str = "runs") -> list[Path]:
    """Explicit run directories (or folders of them); by default the latest run of each
    (model, suite, dtype, device) under `runs_root`."""
    if paths:
        found = []
        for path in map(Path, paths):
            if not (path / MANIFEST).exists() and (path / "runs").is_dir():  # a report: the runs it keeps
                path = path / "runs"
            if (path / MANIFEST).exists():
                found.append(path)
            elif path.is_dir() and any((p / MANIFEST).exists() for p in path.iterdir() if p.is_dir()):
                found += sorted(p for p in path.iterdir() if (p / MANIFEST).exists())
            else:
                raise MissingInputError(f"{path} is not a run directory (no {MANIFEST}) nor a folder of runs")
        return found
    root = Path(runs_root)
    if not root.is_dir():
        raise MissingInputError(f"no run directories given and {root}/ does not exist; run a benchmark first")
    latest: dict[tuple, tuple[str, Path]] = {}
    for run_dir in sorted(p for p in root.iterdir() if (p / MANIFEST).exists()):
        manifest = RunStore(run_dir).manifest()
        config = manifest["config"]
        key = (config["model"], config["suite"], config["dtype"], manifest["environment"].get("device_name"))
        if key not in latest or manifest.get("created", "") >= latest[key][0]:
            latest[key] = (manifest.get("created", ""), run_dir)
    if not latest:
        raise MissingInputError(f"{root}/ holds no runs")
    return [path for _, path in sorted(latest.values())]


def load_run(run_dir: Path) -> tuple[dict, dict]:
    """(manifest, summary); the summary also holds the run's method differences against eagle2
    and each method's image tokens per image (vispec_bench/results/differences.py, image_tokens_plot.py)."""
    store = RunStore(run_dir)
    manifest = store.manifest()
    records = store.records()
    return manifest, metrics.summarize(records, manifest) | {
        "differences": differences.run_differences(records, manifest),
        "image_tokens_per_image": image_tokens_plot.image_tokens_per_image(records)}


def summary_rows(runs: list[tuple[dict, dict]]) -> list[dict]:
    return [row for _, summary in runs for row in metrics.summary_rows(summary)]


def keep_runs(run_dirs: list[Path], out: Path) -> None:
    """Copy each run's manifest and records (merged shards, gzip, no timestamp) into out/runs/<run_id>/."""
    for run_dir in run_dirs:
        store = RunStore(run_dir)
        manifest = store.manifest()
        records = store.records()
        kept = out / "runs" / manifest["run_id"]
        if kept.resolve() == Path(run_dir).resolve():
            continue  # regenerating a report from the runs it keeps
        kept.mkdir(parents=True, exist_ok=True)
        write_json_atomic(kept / MANIFEST, manifest)
        lines = "".join(json.dumps(record, default=str) + "\n" for record in records).encode()
        with open(kept / "records.jsonl.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
            handle.write(lines)


# --- plots -------------------------------------------------------------------------------------

def _label(row: dict) -> str:
    return row["_label"]


def _assign_labels(rows: list[dict]) -> None:
    """Plot groups are (model, suite); the run id is added where several runs share them."""
    runs_per_group: dict[tuple, set] = {}
    for row in rows:
        runs_per_group.setdefault((row["model"], row["suite"]), set()).add(row["run_id"])
    for row in rows:
        label = f"{row['model']}\n{row['suite']}"
        if len(runs_per_group[(row["model"], row["suite"])]) > 1:
            label += f"\n{row['run_id'][-15:]}"
        row["_label"] = label


def _grouped_bars(rows, value, title, ylabel, path, reference=None, interval=False):
    """Bars per (group, method); with `interval`, error bars span the 95 % bootstrap interval.
    Each bar is labelled with its value and the number of samples behind it."""
    import matplotlib.pyplot as plt

    groups = sorted({_label(r) for r in rows})
    methods = list(dict.fromkeys(r["_series"] for r in rows))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) * max(1, len(methods) / 3)), 4))
    top = 0.0
    for i, method in enumerate(methods):
        xs, ys, lows, highs, counts = [], [], [], [], []
        for g, group in enumerate(groups):
            match = [r for r in rows if _label(r) == group and r["_series"] == method]
            if match and match[0][value] is not None:
                row = match[0]
                xs.append(g + (i - (len(methods) - 1) / 2) * width)
                ys.append(row[value])
                low, high = (row.get(f"{value}_ci_low"), row.get(f"{value}_ci_high")) if interval else (None, None)
                lows.append(row[value] - low if low is not None else 0)
                highs.append(high - row[value] if high is not None else 0)
                counts.append(row.get("num_samples"))
        errors = [lows, highs] if any(lows) or any(highs) else None
        bars = ax.bar(xs, ys, width, yerr=errors, label=method, capsize=3)
        ax.bar_label(bars, labels=[f"{y:.2f}\nn={n}" for y, n in zip(ys, counts)], fontsize=7)
        top = max([top] + [y + e for y, e in zip(ys, highs)])
    ax.set_ylim(0, top * 1.35 or 1)  # headroom for the labels and the legend
    if reference is not None:
        ax.axhline(reference, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=min(4, len(methods)))
    save_figure(fig, path)


def _acceptance_plot(rows, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        by_depth = row["_details"].get("acceptance_by_depth") or {}
        if by_depth:
            depths = sorted(by_depth, key=int)
            ax.plot([int(d) for d in depths], [by_depth[d] for d in depths], marker="o",
                    label=f"{row['_series']} ({_label(row).replace(chr(10), ', ')})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("draft depth d")
    ax.set_ylabel("P(accept >= d | tree reached d)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Acceptance rate per draft depth")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def _histogram_plot(rows, path):
    import matplotlib.pyplot as plt

    speculative = [r for r in rows if r["method"] != "ar"]
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(len(speculative), 1)
    for i, row in enumerate(speculative):
        histogram = {int(k): v for k, v in (row["_details"].get("accepted_length_histogram") or {}).items()}
        total = sum(histogram.values()) or 1
        xs = sorted(histogram)
        ax.bar([x + (i - (len(speculative) - 1) / 2) * width for x in xs], [histogram[x] / total for x in xs], width,
               label=f"{row['_series']} ({_label(row).replace(chr(10), ', ')})")
    ax.set_xlabel("tokens emitted per round (accepted + 1)")
    ax.set_ylabel("fraction of rounds")
    ax.set_title("Accepted-length histogram")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def _breakdown_plot(rows, path):
    import matplotlib.pyplot as plt

    profiled = [r for r in rows if r["_details"].get("round_breakdown")]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    labels = [f"{r['_series']} | {_label(r).replace(chr(10), ' | ')}" + _harness_label(r) for r in profiled]
    bottom = [0.0] * len(profiled)
    for phase, color in (("draft", "#4c72b0"), ("verify", "#dd8452"), ("accept_commit", "#55a868")):
        values = [r["_details"]["round_breakdown"][f"{phase}_ms_per_round"] for r in profiled]
        ax.bar(range(len(profiled)), values, bottom=bottom, label=phase, color=color)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(profiled)), labels, fontsize=7, rotation=40, ha="right")
    ax.set_ylabel("ms per round (profiling pass)")
    ax.set_title("Per-round time: draft / verify / accept+commit")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _harness_label(row) -> str:
    share = row["_details"]["round_breakdown"].get("harness_share")
    return "" if share is None else f" | harness {share:.0%}"


def make_plots(rows: list[dict], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    _assign_labels(rows)
    engine_plots.series(rows)
    plots = []
    _grouped_bars(rows, "speedup_decode", "Per-token decode speedup over AR (same engine, same run)",
                  "speedup (x)", out / "speedup.png", reference=1.0, interval=True)
    plots.append(("speedup.png", "Per-token decode speedup over AR; error bars: 95 % bootstrap interval over "
                                 "samples; n = samples"))
    engine_plots.two_speedups_plot(rows, out / "speedup_vs_best_ar.png")
    plots.append(("speedup_vs_best_ar.png", "Per-token decode speedup of each method and engine against AR on its "
                                            "own engine and against the run's fastest AR; error bars: 95 % "
                                            "bootstrap interval"))
    _grouped_bars(rows, "mean_accepted_length", "Mean accepted length tau (incl. bonus token)", "tau",
                  out / "tau.png", reference=1.0, interval=True)
    plots.append(("tau.png", "Mean accepted length τ; error bars: 95 % bootstrap interval; n = samples"))
    _acceptance_plot([r for r in rows if r["method"] != "ar"], out / "acceptance_by_depth.png")
    plots.append(("acceptance_by_depth.png", "Acceptance rate per draft depth"))
    _histogram_plot(rows, out / "accepted_length_histogram.png")
    plots.append(("accepted_length_histogram.png", "Accepted-length histogram"))
    if any(r["_details"].get("round_breakdown") for r in rows):
        _breakdown_plot(rows, out / "round_breakdown.png")
        harness = any(r["_details"]["round_breakdown"].get("harness_share") is not None
                      for r in rows if r["_details"].get("round_breakdown"))
        plots.append(("round_breakdown.png", "Per-round time breakdown (separate profiling pass)" + (
            "; harness: the share of round time outside the target and draft forwards" if harness else "")))
    energy_rows = [r for r in rows if r["joules_per_token"] is not None]
    if energy_rows:
        _grouped_bars(energy_rows, "joules_per_token", "Energy per generated token (NVML)", "J / token",
                      out / "energy.png")
        plots.append(("energy.png", "Energy per generated token"))
    return plots


# --- documents -----------------------------------------------------------------------------------

def _environment_lines(manifest: dict) -> list[str]:
    env = manifest["environment"]
    packages = env.get("packages", {})
    git = env.get("git", {})
    gpu = env.get("gpu") or {}
    nvml = "NVML: " + (f"{gpu.get('name')}, driver {gpu.get('driver')}" if gpu.get("available")
                       else f"absent ({gpu.get('reason') or env.get('nvml', {}).get('reason')})")
    return [f"run `{manifest['run_id']}` ({manifest.get('created')}): {env.get('device_name')}; torch "
            f"{packages.get('torch')}, transformers {packages.get('transformers')}; git "
            f"{(git.get('commit') or 'unknown')[:10]}{' (dirty)' if git.get('dirty') else ''}; {nvml}",
            f"command: `{manifest.get('command', '')}`"]


EXTRA_DEFINITIONS = [
    "per-round breakdown comes from a separate profiling pass that synchronises at every phase; its times are "
    "never used in a speedup.",
]


def unpaired_lines(runs: list[tuple[dict, dict]]) -> list[str]:
    lines = []
    for _, summary in runs:
        several = len(summary.get("engines") or []) > 1
        lines += [f"run `{summary['run_id']}`: {u['method']}{' on ' + u['engine'] if several else ''} sample "
                  f"{u['sample_id']} repeat {u['repeat']}: {u['why']} (excluded from every figure)"
                  for u in summary.get("unpaired", [])]
    return lines


def engine_lines(runs: list[tuple[dict, dict]]) -> list[str]:
    return [f"run `{summary['run_id']}`: {line}" for _, summary in runs for line in by_engine.summary_lines(summary)]


def per_device_lines(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        for device, m in (row["_details"].get("by_device") or {}).items():
            lines.append(f"{row['model']} / {row['suite']} / {row['method']} on {device}: {m['num_samples']} samples, "
                         f"τ {m['mean_accepted_length']:.2f}, decode speedup {m['speedup_decode']:.2f}x, "
                         f"exact match {m['exact_match_rate']:.2f}")
    return lines


def write_report(run_dirs: list[Path], out: Path) -> Path:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(d) for d in run_dirs]
    keep_runs(run_dirs, out)
    rows = summary_rows(runs)
    fields = csv_fields()
    pd.DataFrame([{k: csv_value(k, r[k]) for k in fields} for r in rows], columns=fields).to_csv(
        out / "summary.csv", index=False)
    plots = make_plots(rows, out)
    plots += image_tokens_plot.draw(runs, out)
    method_differences = [d for _, summary in runs for d in summary["differences"]]
    if method_differences:
        differences.write_csv(method_differences, out / "differences.csv")
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")

    header = [column.label for column in TABLE]
    body = [[format_cell(column, r) for column in TABLE] for r in rows]
    md = ["# vispec-bench report", "", f"Generated {generated} from {len(runs)} run(s) by "
          f"`python -m vispec_bench report`; regenerate it from the runs it keeps with `python -m vispec_bench "
          f"report {out}/runs --out {out}`. Brackets: 95 % bootstrap interval over samples.", "",
          "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    md += ["| " + " | ".join(cells) + " |" for cells in body]
    md += differences.markdown_section(method_differences)
    per_device = per_device_lines(rows)
    if per_device:
        md += ["", "## Per-device figures (runs sharded over different devices)", ""] + per_device
    engines = engine_lines(runs)
    if engines:
        md += ["", "## Engines", ""] + [f"- {line}" for line in engines]
    unpaired = unpaired_lines(runs)
    if unpaired:
        md += ["", "## Unpaired records (excluded from every figure)", ""] + [f"- {line}" for line in unpaired]
    md += ["", "## Plots", ""] + [f"![{caption}]({name})" for name, caption in plots]
    md += ["", "## Runs and environments", ""] + [f"- {line}" for m, _ in runs for line in _environment_lines(m)]
    all_definitions = definitions() + EXTRA_DEFINITIONS
    md += ["", "## Definitions", ""] + [f"- {d}" for d in all_definitions]
    (out / "index.md").write_text("\n".join(md) + "\n")

    def embed(name):
        return base64.b64encode((out / name).read_bytes()).decode()

    esc = html.escape

    def html_table(header, body):
        return ("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>"
                + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>" for cells in body)
                + "</tbody></table>")

    table = html_table(header, body)
    if method_differences:
        table += (f"<h2>Method differences</h2><p>{esc(differences.INTRO)}</p>"
                  + html_table(differences.HEADER, differences.table_cells(method_differences)))
    figures = "".join(f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{embed(name)}">'
                      f"<figcaption>{esc(caption)}</figcaption></figure>" for name, caption in plots)
    environments = "".join(f"<li>{esc(line)}</li>" for m, _ in runs for line in _environment_lines(m))
    environments += "".join(f"<li>{esc(line)}</li>" for line in per_device + engines + unpaired)
    definition_items = "".join(f"<li>{esc(d)}</li>" for d in all_definitions)
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vispec-bench report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;font-size:13px}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f3f3f3}}
td:nth-child(-n+3){{text-align:left;white-space:nowrap}}figure{{display:inline-block;margin:1em}}img{{max-width:620px}}
figcaption{{font-size:12px;color:#555}}li{{font-size:13px;margin:2px 0}}</style></head><body>
<h1>vispec-bench report</h1><p>Generated {esc(generated)} from {len(runs)} run(s).</p>{table}
<h2>Plots</h2>{figures}<h2>Runs and environments</h2><ul>{environments}</ul>
<h2>Definitions</h2><ul>{definition_items}</ul></body></html>"""
    (out / "index.html").write_text(page)
    return out
