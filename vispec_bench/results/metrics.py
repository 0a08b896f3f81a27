"""Metric definitions (docs/metrics.md), computed only from run records.

- tau (mean accepted length): sum over rounds of tokens emitted per round / number of rounds;
  a round is one target forward after prefill; AR is exactly 1.0. tau - 1 is the ViSpec-table
  convention (bonus token excluded).
- speedup: sum of AR times / sum of method times over the samples both finished, decode-only
  (after the first token) and end-to-end (vision + prefill + decode); plus the geometric mean
  of per-sample decode ratios.
- exact match: the method's ids equal AR's ids for the sample.
- acceptance rate at draft depth d: among rounds whose tree reached depth d, the fraction
  that accepted at least d draft tokens.
- spread: with --repeats R, the aggregated decode speedup of each repeat separately; its
  standard deviation is what the regression check compares a drop against.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict


def _key(record: dict) -> tuple:
    return record["sample_id"], record.get("repeat", 0)


def acceptance_by_depth(records: list[dict]) -> dict[str, float]:
    reached, accepted = Counter(), Counter()
    for record in records:
        for emitted, depth in zip(record["accepted_lengths"], record.get("draft_depths", [])):
            for d in range(1, depth + 1):
                reached[d] += 1
                accepted[d] += emitted - 1 >= d
    return {str(d): accepted[d] / reached[d] for d in sorted(reached)}


def round_breakdown(records: list[dict]) -> dict | None:
    profiled = [r["round_breakdown"] for r in records if r.get("round_breakdown")]
    if not profiled:
        return None
    rounds = sum(p["num_rounds"] for p in profiled)
    return {f"{phase}_ms_per_round": 1000 * sum(p[f"{phase}_s"] for p in profiled) / max(rounds, 1)
            for phase in ("draft", "verify", "accept_commit")} | {"profiled_rounds": rounds}


def energy_per_token(records: list[dict]) -> float | None:
    measured = [r["energy"] for r in records if (r.get("energy") or {}).get("joules") is not None]
    if not measured or len(measured) < len(records):
        return None
    return sum(e["joules"] for e in measured) / sum(r["num_new_tokens"] for r in records)


def decode_time(record: dict) -> float:
    return record["decode_s"]


def e2e_time(record: dict) -> float:
    return record["prefill_s"] + record["decode_s"]


def _speedup(pairs: list[tuple[dict, dict]], time_of) -> float:
    """Sum of AR times / sum of method times over (AR record, method record) pairs."""
    ar = sum(time_of(a) for a, _ in pairs)
    method = sum(time_of(r) for _, r in pairs)
    return ar / method if method > 0 else float("nan")


def _mean_extra_scores(records: list[dict]) -> dict[str, float]:
    values: dict[str, list[float]] = defaultdict(list)
    for record in records:
        if record.get("repeat", 0) == 0:
            for key, value in (record.get("extra_scores") or {}).items():
                values[key].append(value)
    return {key: sum(v) / len(v) for key, v in sorted(values.items())}


def summarize_method(records: list[dict], ar_by_key: dict[tuple, dict]) -> dict:
    rounds = sum(len(r["accepted_lengths"]) for r in records)
    emitted_in_rounds = sum(sum(r["accepted_lengths"]) for r in records)
    tau = emitted_in_rounds / rounds if rounds else float("nan")
    paired = [(ar_by_key[_key(r)], r) for r in records if _key(r) in ar_by_key]
    by_repeat = defaultdict(list)
    for pair in paired:
        by_repeat[pair[1].get("repeat", 0)].append(pair)
    per_repeat = [_speedup(p, decode_time) for _, p in sorted(by_repeat.items())]
    ratios = [a["decode_s"] / r["decode_s"] for a, r in paired if r["decode_s"] > 0 and a["decode_s"] > 0]
    new_tokens = sum(r["num_new_tokens"] for r in records if r.get("repeat", 0) == 0)  # one pass over the samples
    total_time = sum(map(e2e_time, records))
    scores = [r["score"] for r in records if r.get("score") is not None]
    matches = [r["equivalence"]["exact_match"] for r in records]
    ties = [r for r in records if not r["equivalence"]["exact_match"] and r["equivalence"].get("numerical_tie")]
    dtype_ties = [r for r in records if not r["equivalence"]["exact_match"] and r["equivalence"].get("dtype_tie")]
    return {
        "num_samples": len({r["sample_id"] for r in records}),
        "num_records": len(records),
        "new_tokens": new_tokens,
        "mean_new_tokens": new_tokens / max(1, sum(1 for r in records if r.get("repeat", 0) == 0)),
        "num_rounds": rounds,
        "mean_accepted_length": tau,
        "mean_accepted_length_excl_bonus": tau - 1,
        "speedup_decode": _speedup(paired, decode_time),
        "speedup_e2e": _speedup(paired, e2e_time),
        "speedup_decode_geomean": math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan"),
        "tokens_per_s": sum(r["num_new_tokens"] for r in records) / total_time if total_time > 0 else float("nan"),
        "exact_match_rate": sum(matches) / len(matches) if matches else float("nan"),
        "num_numerical_ties": len(ties),
        "num_divergences": len(matches) - sum(matches),
        "num_dtype_ties": len(dtype_ties),  # divergences within 2 ULPs of the run's dtype
        "accuracy": sum(scores) / len(scores) if scores else None,
        "extra_scores": _mean_extra_scores(records),
        "lossless": all(r.get("lossless", True) for r in records),
        "num_repeats": len(per_repeat),
        "speedup_decode_per_repeat": per_repeat,
        "speedup_decode_std": statistics.stdev(per_repeat) if len(per_repeat) > 1 else None,
        "acceptance_by_depth": acceptance_by_depth(records),
        "accepted_length_histogram": {str(k): v for k, v in sorted(Counter(
            n for r in records for n in r["accepted_lengths"]).items())},
        "round_breakdown": round_breakdown(records),
        "joules_per_token": energy_per_token(records),
        "peak_memory_mb": max((r["peak_memory_mb"] for r in records if r.get("peak_memory_mb") is not None),
                              default=None),
        "config_hash": records[0].get("method_config_hash") if records else None,
    }


def summarize(records: list[dict], manifest: dict) -> dict:
    by_method: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_method[record["method"]].append(record)
    ar_by_key = {_key(r): r for r in by_method.get("ar", [])}
    order = [m["name"] for m in manifest["config"]["methods"]]
    methods = {name: summarize_method(by_method[name], ar_by_key) for name in order if by_method.get(name)}
    devices = sorted({r["device"] for r in records if r.get("device")})
    if len(devices) > 1:  # sharded over different devices: their figures side by side
        for name, summary in methods.items():
            summary["by_device"] = {device: summarize_method([r for r in by_method[name] if r.get("device") == device],
                                                             ar_by_key) for device in devices}
    config = manifest["config"]
    return {"run_id": manifest["run_id"], "created": manifest.get("created"), "model": config["model"],
            "suite": config["suite"], "device": manifest["environment"].get("device_name"), "dtype": config["dtype"],
            "max_new_tokens": config.get("max_new_tokens"), "temperature": config.get("temperature"),
            "sample_ids_hash": config.get("sample_ids_hash"), "methods": methods}
