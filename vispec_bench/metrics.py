"""Metric definitions (DESIGN.md "Definitions"), computed only from run records.

- tau (mean accepted length): sum over rounds of tokens emitted per round / number of rounds;
  a round is one target forward after prefill; AR is exactly 1.0. tau - 1 is the ViSpec-table
  convention (bonus token excluded).
- speedup: sum of AR times / sum of method times over the samples both finished, decode-only
  (after the first token) and end-to-end (vision + prefill + decode); plus the geometric mean
  of per-sample decode ratios.
- exact match: the method's ids equal AR's ids for the sample.
"""

from __future__ import annotations

import math
from collections import defaultdict


def _key(record: dict) -> tuple:
    return record["sample_id"], record.get("repeat", 0)


def summarize_method(records: list[dict], ar_by_key: dict[tuple, dict]) -> dict:
    rounds = sum(len(r["accepted_lengths"]) for r in records)
    emitted_in_rounds = sum(sum(r["accepted_lengths"]) for r in records)
    tau = emitted_in_rounds / rounds if rounds else float("nan")
    paired = [(ar_by_key[_key(r)], r) for r in records if _key(r) in ar_by_key]
    ar_decode = sum(a["decode_s"] for a, _ in paired)
    method_decode = sum(r["decode_s"] for _, r in paired)
    ar_e2e = sum(a["prefill_s"] + a["decode_s"] for a, _ in paired)
    method_e2e = sum(r["prefill_s"] + r["decode_s"] for _, r in paired)
    ratios = [a["decode_s"] / r["decode_s"] for a, r in paired if r["decode_s"] > 0 and a["decode_s"] > 0]
    new_tokens = sum(r["num_new_tokens"] for r in records)
    total_time = sum(r["prefill_s"] + r["decode_s"] for r in records)
    scores = [r["score"] for r in records if r.get("score") is not None]
    matches = [r["equivalence"]["exact_match"] for r in records]
    ties = [r for r in records if not r["equivalence"]["exact_match"] and r["equivalence"].get("numerical_tie")]
    return {
        "num_samples": len(records),
        "new_tokens": new_tokens,
        "num_rounds": rounds,
        "mean_accepted_length": tau,
        "mean_accepted_length_excl_bonus": tau - 1,
        "speedup_decode": ar_decode / method_decode if method_decode > 0 else float("nan"),
        "speedup_e2e": ar_e2e / method_e2e if method_e2e > 0 else float("nan"),
        "speedup_decode_geomean": math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan"),
        "tokens_per_s": new_tokens / total_time if total_time > 0 else float("nan"),
        "exact_match_rate": sum(matches) / len(matches) if matches else float("nan"),
        "num_numerical_ties": len(ties),
        "accuracy": sum(scores) / len(scores) if scores else None,
        "lossless": all(r.get("lossless", True) for r in records),
    }


def summarize(records: list[dict], manifest: dict) -> dict:
    by_method: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_method[record["method"]].append(record)
    ar_by_key = {_key(r): r for r in by_method.get("ar", [])}
    order = [m["name"] for m in manifest["config"]["methods"]]
    methods = {name: summarize_method(by_method[name], ar_by_key) for name in order if by_method.get(name)}
    config = manifest["config"]
    return {"run_id": manifest["run_id"], "model": config["model"], "suite": config["suite"],
            "device": manifest["environment"].get("device_name"), "dtype": config["dtype"], "methods": methods}
