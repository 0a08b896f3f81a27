"""Metrics, computed only from run records; every column is defined once, in `COLUMNS`
(vispec_bench/results/columns.py, re-exported here).

Pairing: a method record pairs with the AR record of the same sample and the same repeat
(AR repeat r with method repeat r). A record without its partner is *unpaired*: it is named in
the summary (`unpaired`) and left out of every figure of that method, never silently.

Speedup is per token, so a method that stops at EOS earlier or later than AR (T > 0, bf16,
lossy options) does not gain or lose from time alone:
    speedup = (Σ tokens_method / Σ t_method) / (Σ tokens_AR / Σ t_AR)
over the paired records; decode counts the tokens and time after the first token, end-to-end
all tokens and prefill + decode time. When the ids match this is exactly Σ t_AR / Σ t_method.
Every τ and speedup carries a 95 % bootstrap interval over samples (a sample's repeats stay
together; vispec_bench/results/uncertainty.py) and the number of samples behind it.

Engines (vispec_bench/results/by_engine.py): figures are per (method, engine), and a record pairs
with AR of the same sample, repeat and engine: `speedup_*` is against AR on the method's own
engine. `speedup_*_vs_best_ar` is the same per-token ratio against the AR records of the run's
fastest AR engine (same sample and repeat): what a user gains over the best plain decoding this
run measured. With one engine the two are equal. A record that compiled a graph inside its timed
decode (`compiles` > 0) counts for τ and exact match, never for a timing figure.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter, defaultdict

import numpy as np

from vispec_bench.errors import InputError
from vispec_bench.results import by_engine, uncertainty
from vispec_bench.results.columns import COLUMNS, COMPARABILITY, Column, csv_fields, format_cell  # noqa: F401
from vispec_bench.results.records import SCHEMA_VERSION, record_engine

LOW_PRECISION = ("bfloat16", "float16")


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


ROUND_PHASES = ("draft", "verify", "accept_commit")


def round_breakdown(records: list[dict]) -> dict | None:
    """ms per round of each phase of the profiling pass and, where every record timed the forwards,
    of the target forward, the draft forwards and the harness (the rest), with
    harness_share = Σ harness / Σ round time."""
    profiled = [r["round_breakdown"] for r in records if r.get("round_breakdown")]
    if not profiled:
        return None
    rounds = sum(p["num_rounds"] for p in profiled)
    parts = ROUND_PHASES
    if all("harness_s" in p for p in profiled):
        parts += ("target_forward", "draft_forward", "harness")
    breakdown = {f"{part}_ms_per_round": 1000 * sum(p[f"{part}_s"] for p in profiled) / max(rounds, 1)
                 for part in parts} | {"profiled_rounds": rounds}
    if "harness" in parts:
        round_s = sum(p[f"{phase}_s"] for p in profiled for phase in ROUND_PHASES)
        breakdown["harness_share"] = sum(p["harness_s"] for p in profiled) / round_s if round_s > 0 else None
    return breakdown


def energy_per_token(records: list[dict]) -> float | None:
    measured = [r["energy"] for r in records if (r.get("energy") or {}).get("joules") is not None]
    if not measured or len(measured) < len(records):
        return None
    return sum(e["joules"] for e in measured) / sum(r["num_new_tokens"] for r in records)


def pair_with_ar(method: str, records: list[dict], ar_records: list[dict]) -> tuple[list[tuple[dict, dict]], list[dict]]:
    """(AR record, method record) pairs by (sample, repeat), and the records left without a partner."""
    ar_by_key, unpaired = {}, []
    for record in ar_records:
        ar_by_key.setdefault(_key(record), record)
    if method == "ar":
        return [(r, r) for r in ar_by_key.values()], []
    pairs, seen = [], set()
    for record in records:
        key = _key(record)
        if key in seen:
            unpaired.append({"method": method, "sample_id": key[0], "repeat": key[1], "why": "duplicate record"})
        elif key in ar_by_key:
            pairs.append((ar_by_key[key], record))
        else:
            unpaired.append({"method": method, "sample_id": key[0], "repeat": key[1], "why": "no AR record"})
        seen.add(key)
    unpaired += [{"method": method, "sample_id": k[0], "repeat": k[1], "why": f"no {method} record"}
                 for k in ar_by_key if k not in seen]
    return pairs, unpaired


def divergence_kind(record: dict, dtype: str) -> str:
    """match | numerical_tie (float32, top-two margin < 1e-4) | dtype_tie (bf16/fp16 and the float32
    referee found the divergence within rounding) | unexplained."""
    match = record["equivalence"]
    if match["exact_match"]:
        return "match"
    if dtype in LOW_PRECISION:
        return "dtype_tie" if (match.get("referee") or {}).get("verdict") == "dtype_tie" else "unexplained"
    return "numerical_tie" if match.get("numerical_tie") else "unexplained"


def draft_cost_fields(records: list[dict]) -> dict:
    """Means over the records of their `draft_cost` (visual tokens, peak KV tokens, KV MiB); None
    unless every record carries the figure (AR, a method that reports none, records written
    before the field existed)."""
    costs = [r.get("draft_cost") for r in records]

    def mean(key: str, scale: float = 1.0):
        values = [cost.get(key) for cost in costs if isinstance(cost, dict)]
        if not records or len(values) < len(records) or any(v is None for v in values):
            return None
        return sum(values) / len(values) / scale

    names = sorted({str(cost["compression"]) for cost in costs if isinstance(cost, dict) and cost.get("compression")})
    return {"draft_visual_tokens": mean("visual_tokens"), "draft_kv_tokens": mean("kv_tokens"),
            "draft_kv_mib": mean("kv_bytes", 2 ** 20), "draft_compression": " ".join(names) or None}


def decode_tokens(record: dict) -> int:
    return record["num_new_tokens"] - 1  # the first token comes out of prefill


def emitted_and_rounds(record: dict) -> tuple[int, int]:
    """τ's numerator and denominator in one record: tokens emitted over its rounds, and its rounds."""
    return sum(record["accepted_lengths"]), len(record["accepted_lengths"])


def _per_sample(pairs: list[tuple[dict, dict]]) -> dict[str, np.ndarray]:
    """Per-sample sums over its repeats, in one array per quantity (samples in first-seen order)."""
    by_sample: dict[str, list] = defaultdict(list)
    for pair in pairs:
        by_sample[pair[1]["sample_id"]].append(pair)
    fields = {
        "tok_m": lambda a, r: decode_tokens(r), "t_m": lambda a, r: r["decode_s"],
        "tok_ar": lambda a, r: decode_tokens(a), "t_ar": lambda a, r: a["decode_s"],
        "e2e_tok_m": lambda a, r: r["num_new_tokens"], "e2e_t_m": lambda a, r: r["prefill_s"] + r["decode_s"],
        "e2e_tok_ar": lambda a, r: a["num_new_tokens"], "e2e_t_ar": lambda a, r: a["prefill_s"] + a["decode_s"],
        "emitted": lambda a, r: emitted_and_rounds(r)[0], "rounds": lambda a, r: emitted_and_rounds(r)[1],
    }
    return {name: np.array([sum(get(a, r) for a, r in group) for group in by_sample.values()], dtype=float)
            for name, get in fields.items()}


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is 0 (no samples of that kind)."""
    return float(numerator) / float(denominator) if denominator else float("nan")


def _throughput_ratio(s: dict, prefix: str = "") -> float:
    return ratio(ratio(s[prefix + "tok_m"].sum(), s[prefix + "t_m"].sum()),
                 ratio(s[prefix + "tok_ar"].sum(), s[prefix + "t_ar"].sum()))


def _require_timings(method: str, s: dict) -> None:
    for name, who in (("t_m", method), ("t_ar", "ar")):
        if len(s[name]) and not s[name].sum() > 0:
            raise InputError(f"cannot compute a speedup for {method}: the decode time (decode_s) of every one of "
                             f"its {len(s[name])} paired sample(s) is 0 in the {who} records; expected positive "
                             "timings from a timed run")


def _ci_fields(name: str, ci: list[float] | None) -> dict:
    return {f"{name}_ci_low": ci[0] if ci else None, f"{name}_ci_high": ci[1] if ci else None}


def _speedup_fields(s: dict, suffix: str = "") -> dict:
    """speedup_decode / speedup_e2e (with `suffix`) and their intervals from per-sample sums."""
    return {f"speedup_decode{suffix}": _throughput_ratio(s),
            **_ci_fields(f"speedup_decode{suffix}", uncertainty.throughput_ratio_ci(s["tok_m"], s["t_m"], s["tok_ar"],
                                                                                   s["t_ar"])),
            f"speedup_e2e{suffix}": _throughput_ratio(s, "e2e_"),
            **_ci_fields(f"speedup_e2e{suffix}", uncertainty.throughput_ratio_ci(
                s["e2e_tok_m"], s["e2e_t_m"], s["e2e_tok_ar"], s["e2e_t_ar"]))}


def _pair_by_key(records: list[dict], partners: list[dict]) -> list[tuple[dict, dict]]:
    """(partner, record) by (sample, repeat); a record's duplicate or a key without partner is skipped."""
    by_key, pairs, seen = {}, [], set()
    for partner in partners:
        by_key.setdefault(_key(partner), partner)
    for record in records:
        if _key(record) in by_key and _key(record) not in seen:
            pairs.append((by_key[_key(record)], record))
        seen.add(_key(record))
    return pairs


def summarize_method(method: str, records: list[dict], ar_records: list[dict], dtype: str,
                     best_ar: list[dict] | None = None) -> dict:
    """One method's figures on one engine; `ar_records`: AR on the same engine; `best_ar`: AR on
    the run's fastest AR engine (default: ar_records, i.e. a one-engine run)."""
    pairs, unpaired = pair_with_ar(method, records, ar_records)
    paired = [r for _, r in pairs]
    timed_pairs = [(a, r) for a, r in pairs if by_engine.timed(a) and by_engine.timed(r)]
    s = _per_sample(pairs)
    t = _per_sample(timed_pairs)  # timing figures: no record that compiled inside its timed region
    _require_timings(method, t)
    by_repeat, timed_by_repeat = defaultdict(list), defaultdict(list)
    for pair in pairs:
        by_repeat[pair[1].get("repeat", 0)].append(pair)
    for pair in timed_pairs:
        timed_by_repeat[pair[1].get("repeat", 0)].append(pair)
    per_repeat = [_throughput_ratio(_per_sample(p)) for _, p in sorted(timed_by_repeat.items())]
    usable = (t["tok_m"] > 0) & (t["t_m"] > 0) & (t["tok_ar"] > 0) & (t["t_ar"] > 0)
    log_ratios = np.log((t["tok_m"][usable] / t["t_m"][usable]) / (t["tok_ar"][usable] / t["t_ar"][usable]))
    first_pass = min(by_repeat) if by_repeat else 0
    one_pass = [r for r in paired if r.get("repeat", 0) == first_pass]
    new_tokens = sum(r["num_new_tokens"] for r in one_pass)
    timed_records = [r for _, r in timed_pairs]
    total_time = sum(r["prefill_s"] + r["decode_s"] for r in timed_records)
    best = _pair_by_key([r for r in records if by_engine.timed(r)],
                        [a for a in (ar_records if best_ar is None else best_ar) if by_engine.timed(a)])
    scores = [r["score"] for r in one_pass if r.get("score") is not None]
    kinds = [(r, divergence_kind(r, dtype)) for r in paired]
    unexplained = [r for r, kind in kinds if kind == "unexplained"]
    tie_samples = {r["sample_id"] for r, kind in kinds if kind.endswith("_tie")}
    tie_samples -= {r["sample_id"] for r in unexplained}  # one tie never excuses another record of its sample
    tau = ratio(s["emitted"].sum(), s["rounds"].sum())
    drafts = sorted({str(_draft_sha256(r)) for r in paired} - {"None"})
    return {
        "num_samples": len(s["t_m"]), "num_records": len(paired), "num_unpaired": len(unpaired), "unpaired": unpaired,
        "finished_ids_hash": hashlib.sha256("\n".join(sorted({r["sample_id"] for r in paired})).encode()).hexdigest()[:16],
        "new_tokens": new_tokens, "mean_new_tokens": ratio(new_tokens, len(one_pass)),
        "num_rounds": int(s["rounds"].sum()),
        "mean_accepted_length": tau, "mean_accepted_length_excl_bonus": tau - 1,
        **_ci_fields("mean_accepted_length", uncertainty.ratio_ci(s["emitted"], s["rounds"])),
        **_speedup_fields(t),
        **_speedup_fields(_per_sample(best), "_vs_best_ar"),
        **draft_cost_fields(paired),
        "num_recompiled": len(pairs) - len(timed_pairs),
        "recompiled": [f"{r['sample_id']}#{r.get('repeat', 0)} ({method if not by_engine.timed(r) else 'its ar'})"
                       for a, r in pairs if not (by_engine.timed(a) and by_engine.timed(r))],
        "speedup_decode_geomean": float(np.exp(log_ratios.mean())) if log_ratios.size else float("nan"),
        **_ci_fields("speedup_decode_geomean", uncertainty.geomean_ci(log_ratios)),
        "num_repeats": len(per_repeat),
        "speedup_decode_per_repeat": per_repeat,
        "speedup_decode_median_repeat": statistics.median(per_repeat) if per_repeat else None,
        "speedup_decode_std": statistics.stdev(per_repeat) if len(per_repeat) > 1 else None,
        "tokens_per_s": ratio(sum(r["num_new_tokens"] for r in timed_records), total_time),
        "exact_match_rate": ratio(sum(r["equivalence"]["exact_match"] for r in paired), len(paired)),
        "num_divergences": sum(kind != "match" for _, kind in kinds),
        "num_tie_samples": len(tie_samples),
        "num_unexplained_divergences": len(unexplained),
        "divergent_samples": [f"{r['sample_id']}#{r.get('repeat', 0)}" for r in unexplained],
        "accuracy": sum(scores) / len(scores) if scores else None,
        "extra_scores": _mean_extra_scores(one_pass),
        "lossless": all(r.get("lossless", True) for r in records),
        "acceptance_by_depth": acceptance_by_depth(paired),
        "accepted_length_histogram": {str(k): v for k, v in sorted(Counter(
            n for r in paired for n in r["accepted_lengths"]).items())},
        "round_breakdown": round_breakdown(paired),
        "joules_per_token": energy_per_token(paired),
        "peak_memory_mb": max((r["peak_memory_mb"] for r in paired if r.get("peak_memory_mb") is not None),
                              default=None),
        "config_hash": records[0].get("method_config_hash") if records else None,
        "draft_sha256": " ".join(drafts) or None,
    }


def _draft_sha256(record: dict) -> str | None:
    """The draft checkpoint's sha256 where the record names one ({"draft": {"path", "sha256", ...}})."""
    draft = record.get("draft")
    return draft.get("sha256") if isinstance(draft, dict) else record.get("draft_sha256")


def _mean_extra_scores(records: list[dict]) -> dict[str, float]:
    values: dict[str, list[float]] = defaultdict(list)
    for record in records:
        for key, value in (record.get("extra_scores") or {}).items():
            values[key].append(value)
    return {key: sum(v) / len(v) for key, v in sorted(values.items())}


def _model_identity(manifest: dict) -> str | None:
    """The weights' identity where the manifest records one (a sha256 or a revision)."""
    model = manifest.get("model")
    if isinstance(model, dict):
        return model.get("sha256") or model.get("revision")
    return manifest.get("model_identity")


def run_identity(manifest: dict) -> dict:
    """Run-level columns: what the run measured and under which settings."""
    config, env = manifest["config"], manifest.get("environment", {})
    packages, git = env.get("packages", {}), env.get("git", {})
    versions = (f"torch {packages.get('torch')}, transformers {packages.get('transformers')}, vispec-bench "
                f"{packages.get('vispec-bench')}, git {(git.get('commit') or 'unknown')[:10]}"
                f"{' (dirty)' if git.get('dirty') else ''}")
    engine = config.get("engine")
    return {"model": config["model"], "model_identity": _model_identity(manifest), "suite": config["suite"],
            "dataset_path": config.get("dataset_path"), "dataset_name": config.get("dataset_name"),
            "split": config.get("split"), "revision": config.get("revision"), "fixtures": config.get("fixtures"),
            "prompt_mode": config.get("prompt_mode"), "temperature": config.get("temperature"),
            "top_p": config.get("top_p"), "top_k": config.get("top_k"), "seed": config.get("seed"),
            "max_new_tokens": config.get("max_new_tokens"), "dtype": config["dtype"],
            "device": env.get("device_name"), "engine": None if engine is None else str(engine),
            "warmup": config.get("warmup"), "versions": versions, "run_id": manifest["run_id"],
            "created": manifest.get("created")}


def summarize(records: list[dict], manifest: dict) -> dict:
    """Figures per method and engine. `methods[name]` holds the method on the run's first engine
    (the reference: eager when it ran); with several engines, `methods[name]["by_engine"]` holds
    it on each."""
    engines = by_engine.run_engines(records, manifest)
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        grouped[(record["method"], record_engine(record))].append(record)
    ar_by_engine = {engine: grouped.get(("ar", engine), []) for engine in engines}
    best, ar_per_token = by_engine.best_ar_engine(ar_by_engine)
    dtype = manifest["config"]["dtype"]
    order = [m["name"] for m in manifest["config"]["methods"]]
    devices = sorted({r["device"] for r in records if r.get("device")})
    methods, unpaired = {}, []
    for name in order:
        figures = {}
        for engine in engines:
            own, ar = grouped.get((name, engine)), ar_by_engine[engine]
            if not own:
                continue
            figures[engine] = summarize_method(name, own, ar, dtype, ar_by_engine.get(best)) | {
                "engine": engine, "best_ar_engine": best}
            for item in figures[engine]["unpaired"]:
                item["engine"] = engine
            unpaired += figures[engine]["unpaired"]
            if len(devices) > 1:  # sharded over different devices: their figures side by side
                figures[engine]["by_device"] = {
                    device: summarize_method(name, [r for r in own if r.get("device") == device],
                                             [r for r in ar if r.get("device") == device], dtype)
                    for device in devices}
        if figures:
            methods[name] = next(iter(figures.values())) | ({"by_engine": figures} if len(engines) > 1 else {})
    config = manifest["config"]
    return {"schema_version": SCHEMA_VERSION, "run_id": manifest["run_id"], "created": manifest.get("created"),
            "model": config["model"], "suite": config["suite"], "device": manifest["environment"].get("device_name"),
            "dtype": config["dtype"], "max_new_tokens": config.get("max_new_tokens"),
            "temperature": config.get("temperature"), "sample_ids_hash": config.get("sample_ids_hash"),
            "identity": run_identity(manifest), "methods": methods, "unpaired": unpaired,
            "engines": engines, "reference_engine": engines[0], "best_ar_engine": best,
            "ar_decode_s_per_token": ar_per_token, "engine_settings": by_engine.engine_settings(manifest, engines),
            "ar_agreement": by_engine.ar_agreement(ar_by_engine, engines[0]),
            "recompiled": by_engine.recompiled_records(records)}


def summary_rows(summary: dict) -> list[dict]:
    """One row per method and engine with every column of `COLUMNS` (and its interval fields);
    `_details` holds that figure's whole summary for the plots."""
    rows = []
    for method, m in summary["methods"].items():
        for engine, figures in (m.get("by_engine") or {m.get("engine") or "eager": m}).items():
            row = {**summary["identity"], **{k: v for k, v in figures.items() if k in _ROW_FIELDS},
                   "method": method, "engine": engine}
            rows.append({name: row.get(name) for name in csv_fields()} | {"_details": figures})
    return rows


_ROW_FIELDS = set(csv_fields())
