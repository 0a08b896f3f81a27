"""Engines in a run (`--engines eager,static,compiled`): every engine over the same samples,
interleaved; AR on each engine equals AR on eager; a graph compiled inside a timed decode is
flagged and kept out of every timing figure; the speedup against the run's fastest AR; resume;
the gate keys entries by engine (old baselines read as eager)."""

import json

import pytest
import torch

from vispec_bench.cli import build_parser, main
from vispec_bench.errors import InputError
from vispec_bench.results import check as check_module
from vispec_bench.results.check import run_check
from vispec_bench.results.metrics import summarize, summary_rows
from vispec_bench.results.records import RunStore, load_records
from vispec_bench.running import runner as runner_module
from vispec_bench.running.config import RunConfig
from vispec_bench.running.config_flags import build_config, given_values
from vispec_bench.running.runner import Runner

TWO = ["--model", "tiny-llava", "--methods", "oracle", "--engines", "eager,static", "--limit", "2",
       "--max-new-tokens", "12", "--dtype", "float32", "--device", "cpu", "--no-progress", "--no-profile"]
QUIET = {"progress": False, "log": lambda m: None}


def _config(**options):
    return RunConfig(**{"model": "tiny-llava", "methods": ["oracle"], "limit": 2, "max_new_tokens": 12,
                        "dtype": "float32", "device": "cpu", "profile_rounds": False} | options)


def _by(records):
    return {(r["sample_id"], r["method"], r["engine"], r["repeat"]): r for r in records}


# --- config ---------------------------------------------------------------------------------------

def test_engines_flag_its_single_spelling_and_unknown_names():
    def resolve(argv):
        return build_config(RunConfig, given_values(build_parser().parse_args(argv), RunConfig))

    assert resolve(["run"]).engines == ["eager"]
    assert resolve(["run", "--engines", "eager,compiled"]).engines == ["eager", "compiled"]
    assert resolve(["run", "--engine", "static"]).engines == ["static"]
    with pytest.raises(InputError, match="unknown engine 'compield'.*did you mean 'compiled'"):
        Runner(_config(engines=["eager", "compield"]), **QUIET)
    with pytest.raises(InputError, match="lists static more than once"):
        Runner(_config(engines=["static", "eager", "static"]), **QUIET)


def test_unknown_engine_on_the_command_line_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["run", *TWO, "--engines", "eager,statik", "--out", str(tmp_path)]) == 2
    assert "did you mean 'static'" in capsys.readouterr().err


# --- a two-engine run -----------------------------------------------------------------------------

def test_two_engine_run_records_both_engines_and_ar_agrees_across_them(tmp_path, capsys, monkeypatch):
    real_decode, capacities = runner_module.decode, []

    def decode_watching_the_cache(adapter, *args, **kwargs):  # the static cache's size around every decode
        before = adapter.engine.capacity
        result = real_decode(adapter, *args, **kwargs)
        if adapter.engine.static:
            capacities.append((before, adapter.engine.capacity))
        return result

    monkeypatch.setattr(runner_module, "decode", decode_watching_the_cache)
    assert main(["run", *TWO, "--out", str(tmp_path), "--run-id", "two"]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "two"
    records = load_records(run_dir / "records.jsonl")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    by = _by(records)
    assert len(records) == 2 * 2 * 2  # samples x engines x (ar, oracle)
    samples = manifest["config"]["sample_ids"]
    # Interleaved: per sample, eager (AR, oracle) then static (AR, oracle).
    assert [(r["sample_id"], r["engine"], r["method"]) for r in records] == [
        (s, e, m) for s in samples for e in ("eager", "static") for m in ("ar", "oracle")]
    for sample in samples:
        eager, static = by[(sample, "ar", "eager", 0)], by[(sample, "ar", "static", 0)]
        assert static["new_ids"] == eager["new_ids"]  # float32: the static cache changes no id
        assert static["ar_reference"]["engine"] == "eager" and static["ar_reference"]["exact_match"]
        for engine in ("eager", "static"):
            assert by[(sample, "oracle", engine, 0)]["equivalence"]["exact_match"]
            assert by[(sample, "oracle", engine, 0)]["compiles"] == 0
    # The engine is part of the config hash; eager adds nothing (old baselines keep their hashes).
    hashes = {r["engine"]: r["method_config_hash"] for r in records if r["method"] == "oracle"}
    oracle = manifest["config"]["methods"][1]
    assert hashes == oracle["config_hash_by_engine"] and hashes["eager"] == oracle["config_hash"] != hashes["static"]
    assert manifest["config"]["engines"] == ["eager", "static"]
    static_warmup = next(w for w in manifest["warmups"] if w["engine"] == "static")
    assert static_warmup["cache_capacity"] >= static_warmup["reserved_tokens"] > 12
    # Sized before the warm-up for every sample: no decode, warm-up included, ever grew the cache.
    assert len(capacities) == 2 + 2 * 2 and {c for pair in capacities for c in pair} == {
        static_warmup["cache_capacity"]}
    # Summary: a row per (method, engine) with both speedups; the best AR engine is named.
    assert summary["engines"] == ["eager", "static"] and summary["best_ar_engine"] in ("eager", "static")
    assert summary["ar_agreement"]["static"] == {"reference": "eager", "compared": 2, "exact_match": 2, "ties": 0,
                                                 "divergent": []}
    rows = {(r["method"], r["engine"]): r for r in summary_rows(summary)}
    assert set(rows) == {(m, e) for m in ("ar", "oracle") for e in ("eager", "static")}
    best = summary["best_ar_engine"]
    for (method, engine), row in rows.items():
        assert row["exact_match_rate"] == 1.0 and row["num_samples"] == 2 and row["num_recompiled"] == 0
        assert row["speedup_decode"] > 0 and row["speedup_decode_vs_best_ar"] > 0
        assert row["best_ar_engine"] == best
        if engine == best:  # against its own engine's AR, which is the best one
            assert row["speedup_decode_vs_best_ar"] == pytest.approx(row["speedup_decode"])
    assert rows[("ar", best)]["speedup_decode_vs_best_ar"] == pytest.approx(1.0)
    assert "AR on static vs AR on eager: 2/2 records with identical ids" in out
    assert "| oracle | static |" in out


def test_interrupted_two_engine_run_resumes_to_the_same_records(tmp_path, monkeypatch):
    config = _config(engines=["eager", "static"])
    full = Runner(config, out_dir=tmp_path, run_id="full", **QUIET).run()
    appended, original_append = [], RunStore.append

    def append_then_die(self, record):
        original_append(self, record)
        appended.append(record)
        if len(appended) == 3:  # killed in the middle of the first sample's static engine
            raise KeyboardInterrupt

    monkeypatch.setattr(RunStore, "append", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        Runner(config, out_dir=tmp_path, run_id="cut", **QUIET).run()
    monkeypatch.setattr(RunStore, "append", original_append)
    Runner(config, resume=tmp_path / "cut", **QUIET).run()
    resumed = load_records(tmp_path / "cut" / "records.jsonl")
    assert len(resumed) == len(_by(resumed)) == 8  # nothing redone, nothing missing
    reference = _by(load_records(full / "records.jsonl"))
    assert {k: r["new_ids"] for k, r in _by(resumed).items()} == {k: r["new_ids"] for k, r in reference.items()}
    assert all(r["equivalence"]["exact_match"] for r in resumed)
    manifest = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert [w["engine"] for w in manifest["warmups"]] == ["eager", "static"] * 2  # one warm-up per session


def test_a_run_from_before_engines_resumes_as_eager(tmp_path):
    config = _config(limit=1)
    run_dir = Runner(config, out_dir=tmp_path, run_id="old", **QUIET).run()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    del manifest["config"]["engines"], manifest["run_config"]["engines"]
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    records = load_records(run_dir / "records.jsonl")
    for record in records:
        del record["engine"]
    (run_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:1]))  # oracle to redo
    Runner(config, resume=run_dir, **QUIET).run()
    resumed = load_records(run_dir / "records.jsonl")
    assert [(r["method"], r.get("engine")) for r in resumed] == [("ar", None), ("oracle", "eager")]


# --- compile inside the timed region --------------------------------------------------------------

def test_a_compile_inside_a_timed_decode_is_flagged_and_kept_out_of_timing(tmp_path, monkeypatch, capsys):
    real_decode, flagged = runner_module.decode, []

    def decode_that_compiled_once(adapter, prompt, proposer, *args, **kwargs):
        result = real_decode(adapter, prompt, proposer, *args, **kwargs)
        timed = "seed" in kwargs  # the runner's timed decode; the warm-up passes no seed
        if timed and proposer is not None and adapter.engine.name == "static" and not flagged:
            result.compiles = 1
            result.decode_s *= 50  # what a compile would do to its time
            flagged.append(prompt)
        return result

    monkeypatch.setattr(runner_module, "decode", decode_that_compiled_once)
    assert main(["run", *TWO, "--out", str(tmp_path), "--run-id", "r"]) == 0
    out = capsys.readouterr().out
    records = load_records(tmp_path / "r" / "records.jsonl")
    bad = [r for r in records if r["compiles"]]
    assert len(bad) == 1 and bad[0]["recompiled"] is True and (bad[0]["method"], bad[0]["engine"]) == (
        "oracle", "static")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert [(x["method"], x["engine"], x["sample_id"]) for x in summary["recompiled"]] == [
        ("oracle", "static", bad[0]["sample_id"])]
    static = summary["methods"]["oracle"]["by_engine"]["static"]
    assert static["num_recompiled"] == 1 and static["recompiled"] == [f"{bad[0]['sample_id']}#0 (oracle)"]
    # Still counted for tau and exact match; left out of every timing figure.
    assert static["num_samples"] == 2 and static["exact_match_rate"] == 1.0
    good = next(r for r in records if r["method"] == "oracle" and r["engine"] == "static" and not r["compiles"])
    ar = next(r for r in records if r["method"] == "ar" and r["engine"] == "static"
              and r["sample_id"] == good["sample_id"])
    expected = ((good["num_new_tokens"] - 1) / good["decode_s"]) / ((ar["num_new_tokens"] - 1) / ar["decode_s"])
    assert static["speedup_decode"] == pytest.approx(expected)
    assert f"recompiled: oracle on static sample {bad[0]['sample_id']} repeat 0" in out


def test_the_compiled_engine_compiles_in_the_warm_up_and_a_later_compile_is_flagged(tmp_path, monkeypatch):
    """A real compiled run (backend aot_eager: dynamo's tracing without codegen): the warm-up
    compiles every graph the first sample's timed decodes use (none compiles there); after
    dynamo forgets its graphs (reset), the next timed decodes compile and are flagged."""
    appended, original_append = [], RunStore.append

    def append_then_forget(self, record):
        original_append(self, record)
        appended.append(record)
        if len(appended) == 2:  # the first sample's AR and oracle are done
            torch._dynamo.reset()

    monkeypatch.setattr(RunStore, "append", append_then_forget)
    torch._dynamo.reset()  # graphs of earlier tests (same shapes) would otherwise serve this warm-up
    config = _config(engines=["compiled"], max_new_tokens=8)
    run_dir = Runner(config, out_dir=tmp_path, run_id="c", compile_backend="aot_eager", **QUIET).run()
    records = load_records(run_dir / "records.jsonl")
    assert [r["compiles"] for r in records[:2]] == [0, 0]
    assert all(r["compiles"] > 0 and r["recompiled"] for r in records[2:])
    assert all(r["equivalence"]["exact_match"] for r in records)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    warmup = manifest["warmups"][0]
    assert warmup["engine"] == "compiled" and warmup["backend"] == "aot_eager" and warmup["compile_s"] > 0
    assert warmup["buckets"] == [1, 5]  # AR's one token, the oracle's depth-4 chain + root
    summary = summarize(records, manifest)
    assert summary["engine_settings"]["compiled"]["warmup_compile_s"] == warmup["compile_s"]
    oracle = summary["methods"]["oracle"]
    assert oracle["num_recompiled"] == 1 and oracle["num_samples"] == 2


# --- metrics from hand-built records --------------------------------------------------------------

def _record(sample, method, engine, decode, accepted, compiles=0, repeat=0):
    return {"sample_id": sample, "method": method, "engine": engine, "repeat": repeat, "accepted_lengths": accepted,
            "prefill_s": 1.0, "decode_s": decode, "num_new_tokens": sum(accepted) + 1, "compiles": compiles,
            "equivalence": {"exact_match": True}, "score": 1.0, "new_ids": list(range(sum(accepted) + 1))}


def _manifest(engines=None):
    config = {"model": "m", "suite": "s", "dtype": "float32", "methods": [{"name": "ar"}, {"name": "spec"}]}
    return {"run_id": "x", "config": config | ({"engines": engines} if engines else {}),
            "environment": {"device_name": "cpu"}}


def _run(engines, times, samples=("a", "b", "c")):
    """times[(method, engine)]: decode seconds per sample (10 decode tokens for every method)."""
    return [_record(s, method, engine, t, [1] * 10 if method == "ar" else [5, 5])
            for s in samples for (method, engine), t in times.items() if engine in engines]


def test_speedup_against_the_fastest_ar_pairs_with_that_engines_ar():
    times = {("ar", "eager"): 10.0, ("spec", "eager"): 5.0, ("ar", "static"): 8.0, ("spec", "static"): 4.0}
    summary = summarize(_run(("eager", "static"), times), _manifest(["eager", "static"]))
    assert summary["best_ar_engine"] == "static"
    assert summary["ar_decode_s_per_token"] == {"eager": pytest.approx(1.0), "static": pytest.approx(0.8)}
    rows = {(r["method"], r["engine"]): r for r in summary_rows(summary)}
    assert rows[("spec", "eager")]["speedup_decode"] == pytest.approx(2.0)
    assert rows[("spec", "eager")]["speedup_decode_vs_best_ar"] == pytest.approx(8.0 / 5.0)
    assert rows[("spec", "static")]["speedup_decode"] == pytest.approx(2.0)
    assert rows[("spec", "static")]["speedup_decode_vs_best_ar"] == pytest.approx(2.0)
    assert rows[("ar", "eager")]["speedup_decode_vs_best_ar"] == pytest.approx(0.8)
    assert rows[("spec", "eager")]["speedup_e2e_vs_best_ar"] == pytest.approx(9.0 / 6.0)
    low, high = rows[("spec", "eager")]["speedup_decode_vs_best_ar_ci_low"], rows[("spec", "eager")][
        "speedup_decode_vs_best_ar_ci_high"]
    assert low == pytest.approx(1.6) and high == pytest.approx(1.6)  # every sample the same ratio


def test_in_a_one_engine_run_the_two_speedups_are_equal():
    times = {("ar", "eager"): 10.0, ("spec", "eager"): 5.0}
    records = _run(("eager",), times)
    records[0]["decode_s"], records[3]["decode_s"] = 12.0, 4.0  # samples differ: intervals are not points
    for record in records:
        del record["engine"]  # a run from before engines: eager
    summary = summarize(records, _manifest())
    (row,) = [r for r in summary_rows(summary) if r["method"] == "spec"]
    assert row["engine"] == "eager" and summary["best_ar_engine"] == "eager"
    for name in ("speedup_decode", "speedup_e2e"):
        for suffix in ("", "_ci_low", "_ci_high"):
            assert row[f"{name}_vs_best_ar{suffix}"] == row[f"{name}{suffix}"]
    assert row["speedup_decode_ci_low"] < row["speedup_decode_ci_high"]
    assert "by_engine" not in summary["methods"]["spec"]


def test_a_recompiled_record_counts_for_tau_never_for_timing():
    times = {("ar", "eager"): 10.0, ("spec", "eager"): 5.0}
    records = _run(("eager",), times)
    clean = summarize(records, _manifest())["methods"]["spec"]
    spec = next(r for r in records if r["method"] == "spec")
    spec["compiles"], spec["decode_s"] = 2, 500.0
    flagged = summarize(records, _manifest())
    figures = flagged["methods"]["spec"]
    for name in ("speedup_decode", "speedup_e2e", "speedup_decode_vs_best_ar", "tokens_per_s"):
        assert figures[name] == pytest.approx(clean[name]), name
    assert figures["num_samples"] == 3 and figures["mean_accepted_length"] == clean["mean_accepted_length"]
    assert figures["num_recompiled"] == 1
    assert [(x["method"], x["sample_id"], x["compiles"]) for x in flagged["recompiled"]] == [("spec", "a", 2)]
    ar = next(r for r in records if r["method"] == "ar" and r["sample_id"] == "b")
    ar["compiles"] = 1  # AR's compile takes its pair out of the method's timing too
    assert summarize(records, _manifest())["methods"]["spec"]["recompiled"] == ["a#0 (spec)", "b#0 (its ar)"]


def test_ar_ids_that_differ_across_engines_are_named():
    records = _run(("eager", "static"), {("ar", "eager"): 10.0, ("ar", "static"): 8.0})
    moved = next(r for r in records if r["engine"] == "static" and r["sample_id"] == "b")
    moved["new_ids"] = [7] + moved["new_ids"][1:]
    summary = summarize(records, _manifest(["eager", "static"]))
    assert summary["ar_agreement"]["static"] == {"reference": "eager", "compared": 3, "exact_match": 2, "ties": 0,
                                                 "divergent": ["b#0"]}


# --- the gate ------------------------------------------------------------------------------------

def _gate_run(root, run_id, engine, spec_time=5.0, repeats=5):
    manifest = _manifest([engine] if engine else None) | {"run_id": run_id}
    manifest["config"] |= {"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "warmup": True}
    store = RunStore.create(root / run_id, manifest)
    for repeat in range(repeats):
        for record in _run((engine or "eager",), {("ar", engine or "eager"): 10.0, ("spec", engine or "eager"):
                                                  spec_time}):
            record |= {"repeat": repeat, "lossless": True, "method_config_hash": f"h-{record['method']}"}
            if engine is None:
                del record["engine"]
            store.append(record)
    return root / run_id


def test_the_gate_keys_entries_by_engine_and_old_baselines_read_as_eager(tmp_path):
    path = tmp_path / "baseline.json"
    assert run_check(str(_gate_run(tmp_path, "old", None)), str(path), write=True, log=lambda m: None) == 0
    baseline = json.loads(path.read_text())
    # As written before engines existed: keys without the engine, entries without an engine value.
    baseline["entries"] = {key.removesuffix("|eager"): entry | {"engine": None}
                           for key, entry in baseline["entries"].items()}
    path.write_text(json.dumps(baseline))
    lines = []
    assert run_check(str(_gate_run(tmp_path, "eager", "eager")), str(path), strict=True, log=lines.append) == 0
    assert "m|s|spec|float32|eager" in "\n".join(lines) and "not comparable" not in "\n".join(lines)
    lines = []
    static = _gate_run(tmp_path, "static", "static", spec_time=9.0)  # slower, but on another engine
    assert run_check(str(static), str(path), log=lines.append) == 0
    assert "m|s|spec|float32|static" in "\n".join(lines) and "no baseline entry" in "\n".join(lines)
    assert "regression" not in "\n".join(lines)


def test_the_committed_baseline_reads_as_eager():
    from pathlib import Path

    baseline = json.loads((Path(__file__).resolve().parents[1] / "reports" / "baseline.json").read_text())
    assert all(key.endswith("|float32|eager") for key in check_module._entries(baseline))
