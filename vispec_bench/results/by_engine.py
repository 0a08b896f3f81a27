"""Engines in a run's records (`--engines eager,static,compiled`): which ran, which AR is the
fastest, whether AR's ids agree across engines, what each engine's warm-up compiled.

A record without `engine` (written before engines existed) ran on eager. A record with
`compiles` > 0 had a graph compiled inside its timed decode: it is kept for every correctness
figure but left out of every timing figure (named in the summary, `recompiled`).

The best AR engine is the one whose AR decodes fastest per token over the run: the lowest
Σ decode_s / Σ decode tokens over its timed AR records, on the (sample, repeat) pairs that every
engine's AR finished (all of them when there are none in common).
"""

from __future__ import annotations

from vispec_bench.results.records import record_engine


def timed(record: dict) -> bool:
    """False when a graph was compiled inside the record's timed decode."""
    return not record.get("compiles")


def run_engines(records: list[dict], manifest: dict) -> list[str]:
    """The run's engines, the reference engine first (eager when it ran, else the first listed),
    then the others in the order given, then any other engine its records name."""
    listed = list(manifest["config"].get("engines") or ["eager"])
    found = list(dict.fromkeys(record_engine(r) for r in records))
    names = list(dict.fromkeys(listed + found))
    reference = "eager" if "eager" in names else names[0]
    return [reference] + [n for n in names if n != reference]


def _key(record: dict) -> tuple:
    return record["sample_id"], record.get("repeat", 0)


def best_ar_engine(ar_by_engine: dict[str, list[dict]]) -> tuple[str | None, dict[str, float]]:
    """(the engine whose AR has the lowest decode seconds per token, {engine: seconds per token})."""
    timed_ar = {engine: [r for r in records if timed(r)] for engine, records in ar_by_engine.items() if records}
    if not timed_ar:
        return None, {}
    common = set.intersection(*({_key(r) for r in records} for records in timed_ar.values()))
    per_token = {}
    for engine, records in timed_ar.items():
        chosen = [r for r in records if _key(r) in common] if common else records
        tokens = sum(r["num_new_tokens"] - 1 for r in chosen)
        seconds = sum(r["decode_s"] for r in chosen)
        if tokens > 0 and seconds > 0:
            per_token[engine] = seconds / tokens
    if not per_token:
        return next(iter(timed_ar)), {}
    return min(per_token, key=per_token.get), per_token


def ar_agreement(ar_by_engine: dict[str, list[dict]], reference: str) -> dict[str, dict]:
    """Per engine other than the reference: its AR ids against the reference engine's AR ids of
    the same sample (repeat 0, the equivalence reference), record by record."""
    if not any(records for engine, records in ar_by_engine.items() if engine != reference):
        return {}
    reference_ids = {r["sample_id"]: r.get("new_ids") for r in ar_by_engine.get(reference, [])
                     if r.get("repeat", 0) == 0}
    found = {}
    for engine, records in ar_by_engine.items():
        if engine == reference:
            continue
        compared = [r for r in records if r["sample_id"] in reference_ids]
        divergent = [r for r in compared if r.get("new_ids") != reference_ids[r["sample_id"]]]
        ties = [r for r in divergent if (r.get("ar_reference") or {}).get("numerical_tie")
                or (r.get("ar_reference") or {}).get("dtype_tie")]
        found[engine] = {"reference": reference, "compared": len(compared),
                         "exact_match": len(compared) - len(divergent), "ties": len(ties),
                         "divergent": [f"{r['sample_id']}#{r.get('repeat', 0)}" for r in divergent]}
    return found


def recompiled_records(records: list[dict]) -> list[dict]:
    """Every record with a graph compiled inside its timed decode, named."""
    return [{"method": r["method"], "engine": record_engine(r), "sample_id": r["sample_id"],
             "repeat": r.get("repeat", 0), "compiles": r["compiles"],
             "why": f"{r['compiles']} graph(s) compiled inside the timed decode (left out of every timing figure)"}
            for r in records if not timed(r)]


def engine_settings(manifest: dict, engines: list[str]) -> dict[str, dict]:
    """Per engine, from the manifest's warm-ups (one entry per engine, rank and session): the
    compile time they spent (outside any timed region), the cache capacity and compiled sizes."""
    settings = {}
    for engine in engines:
        warmups = [w for w in manifest.get("warmups", []) if w.get("engine") == engine]
        last = warmups[-1] if warmups else {}
        settings[engine] = {"warmup_compile_s": sum(w.get("compile_s") or 0.0 for w in warmups) if warmups else None,
                            "warmups": len(warmups), "cache_capacity": last.get("cache_capacity"),
                            "buckets": last.get("buckets"), "backend": last.get("backend")}
    return settings


def summary_lines(summary: dict) -> list[str]:
    """What the CLI and the report say about the run's engines, beyond the table."""
    lines = []
    engines = summary.get("engines") or ["eager"]
    per_token = summary.get("ar_decode_s_per_token") or {}
    if len(engines) > 1:
        timings = ", ".join(f"{e} {1000 * per_token[e]:.2f} ms/token" for e in engines if e in per_token)
        lines.append(f"engines {', '.join(engines)}: fastest AR on {summary.get('best_ar_engine')} ({timings}); "
                     "'vs best AR' divides by it")
    for engine, settings in (summary.get("engine_settings") or {}).items():
        if settings.get("warmup_compile_s"):
            lines.append(f"{engine}: {settings['warmup_compile_s']:.1f} s compiling in {settings['warmups']} "
                         f"warm-up(s) (untimed), cache capacity {settings.get('cache_capacity')}, sizes "
                         f"{settings.get('buckets')}")
    for engine, found in (summary.get("ar_agreement") or {}).items():
        divergent = found["divergent"]
        lines.append(f"AR on {engine} vs AR on {found['reference']}: {found['exact_match']}/{found['compared']} "
                     "records with identical ids" + (f"; divergent: {' '.join(divergent)} ({found['ties']} tie(s))"
                                                     if divergent else ""))
    for item in summary.get("recompiled") or []:
        lines.append(f"recompiled: {item['method']} on {item['engine']} sample {item['sample_id']} repeat "
                     f"{item['repeat']}: {item['why']}")
    return lines
