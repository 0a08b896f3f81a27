"""Paired differences between two methods of one run (docs/metrics.md, "Method differences").

For methods X and Y on the same samples of one run:
    τ_X − τ_Y                                       (τ = Σ emitted / Σ rounds, as in metrics.py)
    throughput X / Y = (Σ tokens_X / Σ t_X) / (Σ tokens_Y / Σ t_Y)   (decode tokens, decode_s)
each with a 95 % paired bootstrap interval over samples: one resample of the sample ids draws X's
and Y's sums together (a sample's repeats stay together), so what the two share — a sample's
length, its difficulty — cancels in the difference instead of widening its interval.

X and Y pair record by record on (sample, repeat, engine), as a method pairs with AR; the first
record of a key counts. A pair where either record compiled a graph inside its timed decode counts
for τ and is left out of the throughput, as in every timing figure.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from vispec_bench.errors import InputError
from vispec_bench.results import by_engine, uncertainty
from vispec_bench.results.metrics import decode_tokens, emitted_and_rounds, ratio
from vispec_bench.results.records import record_engine

REFERENCE = "eagle2"  # the report pairs every other speculative method of a run against it
QUANTITIES = ("emitted", "rounds", "tokens", "decode_s")  # per method: τ's sums, then the timed throughput's


def _per_record(record: dict, timed: bool) -> list[float]:
    emitted, rounds = emitted_and_rounds(record)
    return [emitted, rounds, decode_tokens(record) if timed else 0, record["decode_s"] if timed else 0.0]


def paired_per_sample(records: list[dict], x: str, y: str, engine: str | None = None
                      ) -> tuple[list[str], dict[str, np.ndarray]]:
    """(sorted sample ids, {"<quantity>_x" / "<quantity>_y": [n] sums over the sample's repeats that
    both X and Y finished on `engine`}). `engine` None: the records' one engine (an error if X and Y
    ran on several). tokens/decode_s sum only the pairs where neither record compiled."""
    engines = sorted({record_engine(r) for r in records if r["method"] in (x, y)})
    if engine is None:
        if len(engines) > 1:
            raise InputError(f"{x} and {y} ran on several engines ({', '.join(engines)}); expected the one to "
                             "compare them on (reports/samples_needed.py: --engine)")
        engine = engines[0] if engines else "eager"
    by_key: dict[tuple, dict] = {}
    for record in records:
        if record["method"] in (x, y) and record_engine(record) == engine:
            by_key.setdefault((record["method"], record["sample_id"], record.get("repeat", 0)), record)
    sums: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(2 * len(QUANTITIES)))
    for (method, sample, repeat), rx in by_key.items():
        ry = by_key.get((y, sample, repeat))
        if method == x and ry is not None:
            timed = by_engine.timed(rx) and by_engine.timed(ry)
            sums[sample] += _per_record(rx, timed) + _per_record(ry, timed)
    samples = sorted(sums)
    table = np.array([sums[s] for s in samples]).reshape(len(samples), 2 * len(QUANTITIES))  # [n, 8]
    names = [f"{q}_x" for q in QUANTITIES] + [f"{q}_y" for q in QUANTITIES]
    return samples, {name: table[:, i] for i, name in enumerate(names)}


def throughput_ratio(s: dict[str, np.ndarray]) -> float:
    """(Σ tokens_X / Σ t_X) / (Σ tokens_Y / Σ t_Y) from paired_per_sample's sums."""
    per_token_x = ratio(s["tokens_x"].sum(), s["decode_s_x"].sum())
    return ratio(per_token_x, ratio(s["tokens_y"].sum(), s["decode_s_y"].sum()))


def _verdict(name: str, ci: list[float] | None, null: float, x: str, n: int) -> str:
    if ci is None or ci[0] <= null <= ci[1]:
        return f"{name}: not resolved at {n} samples"
    return f"{name}: interval excludes {null:g} ({x} {'higher' if ci[0] > null else 'lower'})"


def compare(records: list[dict], x: str, y: str, engine: str | None = None) -> dict:
    """τ_X − τ_Y and throughput X / Y on the samples both finished, with paired 95 % intervals."""
    samples, s = paired_per_sample(records, x, y, engine)
    tau_x, tau_y = ratio(s["emitted_x"].sum(), s["rounds_x"].sum()), ratio(s["emitted_y"].sum(), s["rounds_y"].sum())
    tau_ci = uncertainty.ratio_difference_ci(s["emitted_x"], s["rounds_x"], s["emitted_y"], s["rounds_y"])
    timed = (s["decode_s_x"] > 0) & (s["decode_s_y"] > 0)  # samples with a timed pair
    t = {name: values[timed] for name, values in s.items()}
    speed_ci = uncertainty.throughput_ratio_ci(t["tokens_x"], t["decode_s_x"], t["tokens_y"], t["decode_s_y"])
    n, n_timed = len(samples), int(timed.sum())
    return {"x": x, "y": y, "engine": engine, "num_samples": n, "num_timed_samples": n_timed,
            "tau_x": tau_x, "tau_y": tau_y, "tau_difference": tau_x - tau_y,
            "tau_difference_ci_low": tau_ci[0] if tau_ci else None,
            "tau_difference_ci_high": tau_ci[1] if tau_ci else None,
            "throughput_ratio": throughput_ratio(t) if n_timed else None,
            "throughput_ratio_ci_low": speed_ci[0] if speed_ci else None,
            "throughput_ratio_ci_high": speed_ci[1] if speed_ci else None,
            "verdict": f"{_verdict('τ', tau_ci, 0.0, x, n)}; {_verdict('throughput', speed_ci, 1.0, x, n_timed)}"}


def run_differences(records: list[dict], manifest: dict, reference: str = REFERENCE) -> list[dict]:
    """Every speculative method of the run against `reference` on each engine both ran on (none
    when the run has no `reference` records). AR is left out: the speedups are AR's comparison."""
    engines = by_engine.run_engines(records, manifest)
    ran = {(r["method"], record_engine(r)) for r in records}
    methods = list(dict.fromkeys([m["name"] for m in manifest["config"]["methods"]] + [r["method"] for r in records]))
    found = []
    for engine in engines:
        if (reference, engine) not in ran:
            continue
        for method in methods:
            if method not in ("ar", reference) and (method, engine) in ran:
                difference = compare(records, method, reference, engine)
                if difference["num_samples"]:
                    found.append({"run_id": manifest["run_id"], "model": manifest["config"]["model"],
                                  "suite": manifest["config"]["suite"]} | difference)
    return found


CSV_FIELDS = ("run_id", "model", "suite", "engine", "x", "y", "num_samples", "num_timed_samples", "tau_x", "tau_y",
              "tau_difference", "tau_difference_ci_low", "tau_difference_ci_high", "throughput_ratio",
              "throughput_ratio_ci_low", "throughput_ratio_ci_high", "verdict")
HEADER = ("run", "engine", "X", "Y", "samples", "τ_X − τ_Y", "throughput X / Y", "verdict")
INTRO = (f"Each speculative method against {REFERENCE} on the same samples and repeats of its run and engine "
         "(each against AR is the table's speedup): τ_X − τ_Y and the per-token decode throughput ratio X / Y. "
         "Brackets: 95 % paired bootstrap interval over samples (one resample draws both methods); a claim is "
         "resolved when its interval excludes 0 (τ) or 1 (throughput).")


def _with_interval(value, low, high, fmt: str) -> str:
    if value is None:
        return "—"
    return fmt.format(value) + (f" [{fmt.format(low)}, {fmt.format(high)}]" if low is not None else "")


def table_cells(differences: list[dict]) -> list[list[str]]:
    """One row of HEADER per difference, as the report shows it."""
    return [[d["run_id"], d["engine"], d["x"], d["y"], str(d["num_samples"]),
             _with_interval(d["tau_difference"], d["tau_difference_ci_low"], d["tau_difference_ci_high"], "{:+.2f}"),
             _with_interval(d["throughput_ratio"], d["throughput_ratio_ci_low"], d["throughput_ratio_ci_high"],
                            "{:.2f}"), d["verdict"]] for d in differences]


def markdown_section(differences: list[dict]) -> list[str]:
    """The report's "Method differences" lines (none without differences)."""
    if not differences:
        return []
    return (["", "## Method differences", "", INTRO, "", "| " + " | ".join(HEADER) + " |",
             "|" + "|".join("---" for _ in HEADER) + "|"]
            + ["| " + " | ".join(cells) + " |" for cells in table_cells(differences)])


def write_csv(differences: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows({k: d.get(k) for k in CSV_FIELDS} for d in differences)
