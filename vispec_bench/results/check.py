"""`check`: compare a run (or a report) with a stored baseline; exit 1 on a regression.

Like asv's compare step: figures from different code or settings are "not comparable", never
compared. An entry is keyed by (model, suite, method, dtype) and carries what must match for a
comparison to mean anything: the method's config hash (code path + options), the token cap,
temperature, the sample-id hash and the device.

Rules, per comparable entry:
- speedup: a regression when it dropped by more than --max-speedup-drop (relative) AND by more
  than the measured noise, 2 * sqrt(std_baseline^2 + std_now^2) of the per-repeat speedups (a
  drop smaller than the spread is not a regression; without repeats only the threshold applies);
- tau: a regression when it dropped by more than --max-tau-drop (relative);
- exact match: a lossless method in a float32 run must reproduce AR on every sample, apart
  from divergences at a numerical tie (top-1/top-2 margin < 1e-4), which are counted.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from vispec_bench.errors import InputError, MissingInputError
from vispec_bench.results.records import MANIFEST, write_json_atomic

COMPARABILITY = ("config_hash", "max_new_tokens", "temperature", "sample_ids_hash", "device")
KEPT = ("model", "suite", "method", "dtype", "speedup_decode", "speedup_decode_std", "num_repeats",
        "mean_accepted_length", "exact_match_rate", "num_numerical_ties", "num_samples", "lossless", "run_id",
        *COMPARABILITY)


def _number(value):
    if value in (None, ""):
        return None
    if isinstance(value, (int, float, bool)):
        return value
    if value in ("True", "False"):
        return value == "True"
    try:
        return float(value)
    except ValueError:
        return value


def load_rows(path: str | Path) -> list[dict]:
    """Rows from a run directory (recomputed from its records) or a report directory (summary.csv)."""
    path = Path(path)
    if (path / MANIFEST).exists():
        from vispec_bench.results.report import load_run, summary_rows

        rows = summary_rows([load_run(path)])
    elif (path / "summary.csv").exists():
        with open(path / "summary.csv") as handle:
            rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    else:
        raise MissingInputError(f"{path} is neither a run directory ({MANIFEST}) nor a report (summary.csv)")
    return [{k: row.get(k) for k in KEPT} for row in rows]


def entry_key(row: dict) -> str:
    return "|".join(str(row[k]) for k in ("model", "suite", "method", "dtype"))


def write_baseline(rows: list[dict], baseline_path: Path) -> dict:
    baseline = json.loads(baseline_path.read_text()) if baseline_path.exists() else {"version": 1, "entries": {}}
    for row in rows:
        baseline["entries"][entry_key(row)] = row
    baseline_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(baseline_path, baseline)
    return baseline


def compare(rows: list[dict], baseline: dict, max_speedup_drop: float, max_tau_drop: float) -> list[dict]:
    """One finding per (entry, metric): verdict ok | regression | improved | not comparable | new."""
    findings = []
    for row in rows:
        key = entry_key(row)
        base = baseline["entries"].get(key)
        if row["dtype"] == "float32" and row.get("lossless") and row["method"] != "ar":
            rate = row.get("exact_match_rate") or 0.0
            ties = row.get("num_numerical_ties") or 0
            samples = row.get("num_samples") or 1
            explained = rate + ties / max(samples, 1) >= 1.0 - 1e-9
            findings.append({"entry": key, "metric": "exact_match_rate", "baseline": 1.0, "now": rate,
                             "verdict": "ok" if rate == 1.0 or explained else "regression",
                             "note": f"{ties} numerical tie(s)" if ties else ""})
        if base is None:
            findings.append({"entry": key, "metric": "-", "baseline": None, "now": None, "verdict": "new",
                             "note": "no baseline entry"})
            continue
        changed = [k for k in COMPARABILITY if base.get(k) != row.get(k)]
        if changed:
            findings.append({"entry": key, "metric": "-", "baseline": None, "now": None, "verdict": "not comparable",
                             "note": "; ".join(f"{k}: {base.get(k)} -> {row.get(k)}" for k in changed)})
            continue
        if row["method"] == "ar":
            continue
        findings.append(_speedup_finding(key, base, row, max_speedup_drop))
        findings.append(_relative_finding(key, "mean_accepted_length", base, row, max_tau_drop))
    return findings


def _relative_finding(key, metric, base, row, max_drop):
    before, now = base[metric], row[metric]
    drop = (before - now) / before if before else 0.0
    verdict = "regression" if drop > max_drop else ("improved" if drop < -max_drop else "ok")
    return {"entry": key, "metric": metric, "baseline": before, "now": now, "verdict": verdict,
            "note": f"{-drop:+.1%} (threshold -{max_drop:.0%})"}


def _speedup_finding(key, base, row, max_drop):
    finding = _relative_finding(key, "speedup_decode", base, row, max_drop)
    spreads = [s for s in (base.get("speedup_decode_std"), row.get("speedup_decode_std")) if s is not None]
    if finding["verdict"] == "regression" and spreads:
        noise = 2 * math.sqrt(sum(s * s for s in spreads))
        if base["speedup_decode"] - row["speedup_decode"] <= noise:
            finding["verdict"] = "ok"
            finding["note"] += f"; within noise (2σ = {noise:.3f})"
        else:
            finding["note"] += f"; beyond noise (2σ = {noise:.3f})"
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
    regressions = [f for f in findings if f["verdict"] == "regression"]
    incomparable = [f for f in findings if f["verdict"] == "not comparable"]
    if regressions:
        log(f"\nFAIL: {len(regressions)} regression(s)")
        return 1
    if incomparable and strict:
        log(f"\nFAIL (--strict): {len(incomparable)} entr(y/ies) not comparable with the baseline")
        return 1
    log("\nOK" + (f" ({len(incomparable)} not comparable, not compared)" if incomparable else ""))
    return 0
