"""`check`: compare a run (or a report) with a stored baseline; exit 1 on a regression.

Like asv's compare step: figures from different code or settings are "not comparable", never
compared. An entry is keyed by (model, suite, method, dtype, engine) and carries every column marked
`comparable` in the column table (vispec_bench/results/columns.py): model and draft identity,
the method's config hash, suite source, the sample ids actually finished, prompt mode,
sampling, token cap, dtype, device, engine, warm-up. Differing versions are shown, not refused.
An entry or row without an engine (written before engines existed) ran on eager; the method's
config hash covers the engine too, so a compiled run is never compared with an eager baseline.

Rules, per entry:
- exact match (temperature 0, lossless methods, any dtype): every paired record must match AR
  or be an excused tie — in float32 a top-two margin < 1e-4, in bf16/fp16 a divergence the
  float32 referee found within rounding. Ties are decided per record and counted per sample, so
  one tie never excuses another record. Above temperature 0 ids cannot match: no exact-match gate.
- speedup: the baseline's centre is the median of its per-repeat decode speedups and its noise
  σ = 1.4826 · MAD of them (robust: one slow baseline repeat moves neither); a baseline needs
  ≥ MIN_BASELINE_REPEATS repeats. The new run's pooled speedup (all its repeats, so a slow repeat
  counts) is a regression when it is below the centre by more than max(--max-speedup-drop,
  2σ / centre), relatively. The new run's own spread never widens the allowance.
- tau: a regression when it dropped by more than --max-tau-drop (relative).
- a method in the baseline (same model, suite, dtype) missing from the run: reported always,
  a failure under --strict, like an entry that is not comparable.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from vispec_bench.errors import InputError, MissingInputError
from vispec_bench.results.columns import COMPARABILITY, csv_fields, parse_csv_value
from vispec_bench.results.records import MANIFEST, write_json_atomic

MIN_BASELINE_REPEATS = 5
BASELINE_VERSION = 2


def load_rows(path: str | Path) -> list[dict]:
    """Rows from a run directory (recomputed from its records) or a report directory (summary.csv)."""
    path = Path(path)
    if (path / MANIFEST).exists():
        from vispec_bench.results.metrics import summary_rows
        from vispec_bench.results.report import load_run

        rows = summary_rows(load_run(path)[1])
    elif (path / "summary.csv").exists():
        with open(path / "summary.csv") as handle:
            rows = [{k: parse_csv_value(k, v) for k, v in row.items()} for row in csv.DictReader(handle)]
    else:
        raise MissingInputError(f"{path} is neither a run directory ({MANIFEST}) nor a report (summary.csv)")
    return [{k: row.get(k) for k in csv_fields()} for row in rows]


def engine_of(row: dict) -> str:
    return row.get("engine") or "eager"


def entry_key(row: dict) -> str:
    return "|".join([*(str(row[k]) for k in ("model", "suite", "method", "dtype")), engine_of(row)])


def _value(row: dict, column: str):
    return engine_of(row) if column == "engine" else row.get(column)


def _entries(baseline: dict) -> dict:
    """The baseline's entries keyed by entry_key: an entry written before engines existed (key
    model|suite|method|dtype, no engine field) is the eager entry."""
    return {entry_key(entry) if all(k in entry for k in ("model", "suite", "method", "dtype")) else f"{key}|eager":
            entry for key, entry in baseline["entries"].items()}


def write_baseline(rows: list[dict], baseline_path: Path) -> dict:
    short = [f"{entry_key(r)} ({r.get('num_repeats')})" for r in rows
             if r["method"] != "ar" and (r.get("num_repeats") or 0) < MIN_BASELINE_REPEATS]
    if short:
        raise InputError(f"a baseline measures its noise from >= {MIN_BASELINE_REPEATS} repeats; these entries have "
                         f"fewer: {', '.join(short)}. Re-run with --repeats {MIN_BASELINE_REPEATS} or more")
    baseline = json.loads(baseline_path.read_text()) if baseline_path.exists() else {"entries": {}}
    baseline["entries"] = _entries(baseline)
    baseline["version"] = BASELINE_VERSION
    for row in rows:
        baseline["entries"][entry_key(row)] = row
    baseline_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(baseline_path, baseline)
    return baseline


def _finding(key, metric, base, now, verdict, note=""):
    return {"entry": key, "metric": metric, "baseline": base, "now": now, "verdict": verdict, "note": note}


def _exact_match_finding(key: str, row: dict) -> dict | None:
    if row["method"] == "ar" or not row.get("lossless") or float(row.get("temperature") or 0) != 0:
        return None
    unexplained = row.get("num_unexplained_divergences")
    ties = row.get("num_tie_samples") or 0
    note = f"{ties} tie sample(s)" if ties else ""
    if unexplained is None:
        return _finding(key, "exact_match_rate", 1.0, row.get("exact_match_rate"), "regression",
                        "no per-record tie verdicts (written by an older vispec-bench): re-run")
    if unexplained:
        listed = " ".join(row.get("divergent_samples") or [])
        note = f"{unexplained} unexplained divergence(s): {listed}" + (f"; {note}" if note else "")
    return _finding(key, "exact_match_rate", 1.0, row.get("exact_match_rate"),
                    "regression" if unexplained else "ok", note)


def compare(rows: list[dict], baseline: dict, max_speedup_drop: float, max_tau_drop: float) -> list[dict]:
    """Findings per (entry, metric): verdict ok | regression | improved | not comparable | new | missing."""
    findings = []
    entries = _entries(baseline)
    for row in rows:
        key = entry_key(row)
        exact = _exact_match_finding(key, row)
        if exact:
            findings.append(exact)
        base = entries.get(key)
        if base is None:
            findings.append(_finding(key, "-", None, None, "new", "no baseline entry"))
            continue
        changed = [k for k in COMPARABILITY if _value(base, k) != _value(row, k)]
        versions = "" if base.get("versions") == row.get("versions") else \
            f"versions differ: {base.get('versions')} -> {row.get('versions')}"
        if changed:
            note = "; ".join(f"{k}: {_value(base, k)} -> {_value(row, k)}" for k in changed)
            findings.append(_finding(key, "-", None, None, "not comparable", "; ".join(filter(None, [note, versions]))))
            continue
        if row["method"] == "ar":
            continue
        findings.append(_speedup_finding(key, base, row, max_speedup_drop, versions))
        findings.append(_relative_finding(key, "mean_accepted_length", base["mean_accepted_length"],
                                          row["mean_accepted_length"], max_tau_drop))
    present = {entry_key(r) for r in rows}
    groups = {(r["model"], r["suite"], r["dtype"], engine_of(r)) for r in rows}
    for key, base in entries.items():
        if key not in present and (base.get("model"), base.get("suite"), base.get("dtype"), engine_of(base)) in groups:
            findings.append(_finding(key, "-", None, None, "missing", "in the baseline, not in this run"))
    return findings


def _relative_finding(key, metric, before, now, max_drop, allowance=None):
    allowance = max_drop if allowance is None else allowance
    drop = (before - now) / before if before else 0.0
    verdict = "regression" if drop > allowance else ("improved" if drop < -allowance else "ok")
    return _finding(key, metric, before, now, verdict, f"{-drop:+.1%} (allowed -{allowance:.1%})")


def _speedup_finding(key, base, row, max_drop, versions):
    per_repeat = [v for v in base.get("speedup_decode_per_repeat") or [] if isinstance(v, (int, float))]
    if len(per_repeat) < MIN_BASELINE_REPEATS:
        return _finding(key, "speedup_decode", None, row["speedup_decode"], "not comparable",
                        f"the baseline entry has {len(per_repeat)} per-repeat speedups; its noise needs >= "
                        f"{MIN_BASELINE_REPEATS}: rewrite it with --repeats {MIN_BASELINE_REPEATS}")
    centre = statistics.median(per_repeat)
    sigma = 1.4826 * statistics.median(abs(v - centre) for v in per_repeat)
    allowance = max(max_drop, 2 * sigma / centre)
    finding = _relative_finding(key, "speedup_decode", centre, row["speedup_decode"], max_drop, allowance)
    finding["note"] += (f"; baseline median of {len(per_repeat)} repeats, 2σ = {2 * sigma:.3f}; this run's repeats: "
                        + " ".join(f"{v:.2f}" for v in row.get("speedup_decode_per_repeat") or []))
    if versions:
        finding["note"] += f"; {versions}"
    return finding


def format_findings(findings: list[dict]) -> str:
    header = ["entry", "metric", "baseline", "now", "verdict", "note"]

    def fmt(value):
        return "—" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))

    rows = [[fmt(f[h]) for h in header] for f in findings]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def run_check(target: str, baseline_path: str, max_speedup_drop: float = 0.10, max_tau_drop: float = 0.02,
              write: bool = False, strict: bool = False, log=print) -> int:
    rows = load_rows(target)
    baseline_file = Path(baseline_path)
    if write:
        write_baseline(rows, baseline_file)
        log(f"baseline {baseline_file}: wrote {len(rows)} entries from {target}")
        return 0
    if not baseline_file.exists():
        raise MissingInputError(f"baseline {baseline_file} does not exist; create it with --write-baseline")
    try:
        baseline = json.loads(baseline_file.read_text())
        baseline["entries"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise InputError(f"baseline {baseline_file} is not a vispec-bench baseline (expected {{'entries': ...}})") \
            from None
    findings = compare(rows, baseline, max_speedup_drop, max_tau_drop)
    log(format_findings(findings))
    if baseline.get("version", 1) < BASELINE_VERSION:
        log(f"\nnote: {baseline_file} is a version {baseline.get('version', 1)} baseline (this vispec-bench writes "
            f"version {BASELINE_VERSION}): its entries lack what comparability and the noise rule need; rewrite it "
            "from >= 5 repeats with --write-baseline")
    regressions = [f for f in findings if f["verdict"] == "regression"]
    incomparable = [f for f in findings if f["verdict"] == "not comparable"]
    missing = [f for f in findings if f["verdict"] == "missing"]
    if regressions:
        log(f"\nFAIL: {len(regressions)} regression(s)")
        return 1
    if (incomparable or missing) and strict:
        log(f"\nFAIL (--strict): {len(incomparable)} not comparable with the baseline, {len(missing)} baseline "
            "method(s) missing from the run")
        return 1
    notes = [f"{len(incomparable)} not comparable, not compared" if incomparable else "",
             f"{len(missing)} baseline method(s) missing from this run" if missing else ""]
    log("\nOK" + (f" ({'; '.join(filter(None, notes))})" if any(notes) else ""))
    return 0
