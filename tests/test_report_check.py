"""Reports and the regression check, on hand-built records with known numbers."""

import csv
import json
import math
import statistics

import pytest

from vispec_bench.results.check import run_check
from vispec_bench.cli import main
from vispec_bench.results.records import RunStore
from vispec_bench.results.report import find_runs, write_report


def _manifest(run_id, model="m", suite="s", dtype="float32", max_new_tokens=16, config_hash="h1", device="cpu-x"):
    return {"run_id": run_id, "created": "2026-11-22T12:00:00", "command": "test",
            "config": {"model": model, "suite": suite, "dtype": dtype, "max_new_tokens": max_new_tokens,
                       "temperature": 0.0, "sample_ids_hash": "abc",
                       "methods": [{"name": "ar", "config_hash": "har"}, {"name": "spec", "config_hash": config_hash}]},
            "environment": {"device_name": device, "packages": {"torch": "x"}, "git": {"commit": "deadbeef"},
                            "nvml": {"available": False, "reason": "NVMLError_LibraryNotFound"}}}


def _record(sample, method, accepted, prefill, decode, repeat=0, match=True, config_hash="h1", depths=None,
            joules=None, breakdown=None, score=1.0):
    return {"sample_id": sample, "method": method, "repeat": repeat, "accepted_lengths": accepted,
            "draft_depths": depths if depths is not None else [0] * len(accepted), "prefill_s": prefill,
            "decode_s": decode, "num_new_tokens": sum(accepted) + 1, "lossless": True,
            "method_config_hash": "har" if method == "ar" else config_hash,
            "equivalence": {"exact_match": match, "numerical_tie": False}, "score": score,
            "energy": {"available": joules is not None, "joules": joules}, "round_breakdown": breakdown}


def make_run(root, run_id, records, **manifest_options):
    store = RunStore.create(root / run_id, _manifest(run_id, **manifest_options))
    for record in records:
        store.append(record)
    return root / run_id


def speculative_run(root, run_id, spec_decode_times, ar_decode=10.0, match=True, config_hash="h1", **options):
    """Two samples, len(spec_decode_times) repeats; AR decodes in `ar_decode` s per sample."""
    records = []
    for repeat, spec_decode in enumerate(spec_decode_times):
        for sample in ("a", "b"):
            records.append(_record(sample, "ar", [1] * 10, 1.0, ar_decode, repeat))
            records.append(_record(sample, "spec", [3, 3, 2, 2], 1.0, spec_decode, repeat, match=match,
                                   config_hash=config_hash, depths=[3, 3, 3, 3]))
    return make_run(root, run_id, records, config_hash=config_hash, **options)


def test_summary_csv_numbers_match_independent_computation(tmp_path):
    records = [
        _record("a", "ar", [1] * 6, 0.4, 6.0, breakdown={"draft_s": 0, "verify_s": 5.4, "accept_commit_s": 0.6,
                                                          "num_rounds": 6}),
        _record("b", "ar", [1] * 3, 0.6, 3.0),
        _record("a", "spec", [3, 4], 0.4, 2.0, depths=[3, 3], joules=None,
                breakdown={"draft_s": 0.8, "verify_s": 1.0, "accept_commit_s": 0.2, "num_rounds": 2}),
        _record("b", "spec", [1, 2, 1], 0.6, 2.5, depths=[3, 3, 3], match=False, score=0.0),
    ]
    run_dir = make_run(tmp_path, "r", records)
    out = write_report([run_dir], tmp_path / "report")
    rows = {row["method"]: row for row in csv.DictReader(open(out / "summary.csv"))}
    spec = rows["spec"]
    emitted, rounds = 3 + 4 + 1 + 2 + 1, 5
    assert float(spec["mean_accepted_length"]) == pytest.approx(emitted / rounds)
    assert float(spec["mean_accepted_length_excl_bonus"]) == pytest.approx(emitted / rounds - 1)
    # Per token: spec decodes 7 + 4 tokens after the first, AR 6 + 3.
    assert float(spec["speedup_decode"]) == pytest.approx(((7 + 4) / (2.0 + 2.5)) / ((6 + 3) / (6.0 + 3.0)))
    assert float(spec["speedup_e2e"]) == pytest.approx(((8 + 5) / (2.4 + 3.1)) / ((7 + 4) / (6.4 + 3.6)))
    assert float(spec["speedup_decode_geomean"]) == pytest.approx(
        math.sqrt(((7 / 2.0) / (6 / 6.0)) * ((4 / 2.5) / (3 / 3.0))))
    assert float(spec["speedup_decode_ci_low"]) <= float(spec["speedup_decode"]) <= float(spec["speedup_decode_ci_high"])
    assert int(spec["new_tokens"]) == (7 + 1) + (4 + 1)
    assert float(spec["tokens_per_s"]) == pytest.approx(13 / (2.4 + 3.1))
    assert float(spec["exact_match_rate"]) == 0.5
    assert float(spec["accuracy"]) == 0.5
    assert int(spec["num_samples"]) == 2
    assert spec["joules_per_token"] == ""  # not measured on this machine: absent, not zero
    assert spec["device"] == "cpu-x" and spec["model"] == "m" and spec["suite"] == "s"
    assert float(rows["ar"]["mean_accepted_length"]) == 1.0
    # The acceptance-per-depth and breakdown figures behind the plots.
    from vispec_bench.results.metrics import acceptance_by_depth, round_breakdown

    spec_records = [r for r in records if r["method"] == "spec"]
    # Five rounds, all reaching depth 3, accepting [2, 3, 0, 1, 0] draft tokens: >= 1 in 3, >= 2 in 2, >= 3 in 1.
    assert acceptance_by_depth(spec_records) == {"1": 3 / 5, "2": 2 / 5, "3": 1 / 5}
    assert round_breakdown(spec_records)["draft_ms_per_round"] == pytest.approx(1000 * 0.8 / 2)
    for name in ("index.md", "index.html", "speedup.png", "tau.png", "acceptance_by_depth.png",
                 "accepted_length_histogram.png", "round_breakdown.png"):
        assert (out / name).stat().st_size > 0
    html = (out / "index.html").read_text()
    assert "data:image/png;base64," in html and 'src="speedup.png"' not in html  # self-contained
    assert "NVMLError_LibraryNotFound" in (out / "index.md").read_text()
    # The report keeps its records and manifest, and regenerates from them to the same numbers.
    assert (out / "runs" / "r" / "records.jsonl.gz").exists() and (out / "runs" / "r" / "manifest.json").exists()
    again = write_report(find_runs([str(out)]), tmp_path / "again")
    assert (again / "summary.csv").read_text() == (out / "summary.csv").read_text()


def test_repeats_give_a_spread(tmp_path):
    run_dir = speculative_run(tmp_path, "r", [5.0, 4.0, 5.0])
    out = write_report([run_dir], tmp_path / "report")
    spec = {row["method"]: row for row in csv.DictReader(open(out / "summary.csv"))}["spec"]
    assert float(spec["speedup_decode_std"]) == pytest.approx(statistics.stdev([2.0, 2.5, 2.0]))
    assert int(spec["num_repeats"]) == 3


def test_check_fails_on_a_20_percent_speedup_drop(tmp_path):
    baseline = tmp_path / "baseline.json"
    base = speculative_run(tmp_path, "base", [5.0] * 5)  # 2.0x, no spread
    assert run_check(str(base), str(baseline), write=True, log=lambda m: None) == 0
    slower = speculative_run(tmp_path, "slow", [6.25, 6.25, 6.25])  # 1.6x: -20 %
    lines = []
    assert run_check(str(slower), str(baseline), log=lines.append) == 1
    assert "regression" in lines[0] and "speedup_decode" in lines[0]


def test_check_calls_a_changed_config_not_comparable(tmp_path):
    baseline = tmp_path / "baseline.json"
    run_check(str(speculative_run(tmp_path, "base", [5.0] * 5)), str(baseline), write=True, log=lambda m: None)
    changed = speculative_run(tmp_path, "changed", [9.0], config_hash="h2")  # slower, but another config
    lines = []
    assert run_check(str(changed), str(baseline), log=lines.append) == 0
    assert "not comparable" in lines[0] and "config_hash: h1 -> h2" in lines[0]
    assert run_check(str(changed), str(baseline), strict=True, log=lambda m: None) == 1
    other_cap = speculative_run(tmp_path, "cap", [5.0], max_new_tokens=32)
    lines = []
    run_check(str(other_cap), str(baseline), log=lines.append)
    assert "max_new_tokens: 16 -> 32" in lines[0]


def test_check_fails_a_lossless_float32_run_that_diverges_from_ar(tmp_path):
    baseline = tmp_path / "baseline.json"
    run_check(str(speculative_run(tmp_path, "base", [5.0] * 5)), str(baseline), write=True, log=lambda m: None)
    diverged = speculative_run(tmp_path, "div", [5.0], match=False)
    lines = []
    assert run_check(str(diverged), str(baseline), log=lines.append) == 1
    assert "exact_match_rate" in lines[0]


def test_check_reads_a_report_directory_and_rejects_a_bad_baseline(tmp_path):
    run_dir = speculative_run(tmp_path, "base", [5.0] * 5)
    report = write_report([run_dir], tmp_path / "report")
    baseline = tmp_path / "baseline.json"
    assert run_check(str(report), str(baseline), write=True, log=lambda m: None) == 0
    assert run_check(str(run_dir), str(baseline), log=lambda m: None) == 0
    baseline.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a vispec-bench baseline"):
        run_check(str(run_dir), str(baseline), log=lambda m: None)
    with pytest.raises(FileNotFoundError, match="--write-baseline"):
        run_check(str(run_dir), str(tmp_path / "missing.json"), log=lambda m: None)


def test_cpu_run_records_why_nvml_is_absent_and_has_a_round_breakdown(tmp_path):
    args = ["run", "--model", "tiny-llava", "--methods", "oracle", "--limit", "1", "--max-new-tokens", "8",
            "--dtype", "float32", "--device", "cpu", "--out", str(tmp_path), "--run-id", "cpu", "--no-progress"]
    assert main(args) == 0
    manifest = json.loads((tmp_path / "cpu" / "manifest.json").read_text())
    assert manifest["environment"]["gpu"]["available"] is False
    assert manifest["environment"]["gpu"]["reason"]
    record = json.loads((tmp_path / "cpu" / "records.jsonl").read_text().splitlines()[1])
    assert record["energy"]["available"] is False
    assert record["round_breakdown"]["num_rounds"] == record["num_rounds"]
    assert record["round_breakdown"]["verify_s"] > 0
    # The profiling pass times the target forward (the oracle has no draft network): the rest is the harness.
    assert 0 < record["round_breakdown"]["target_forward_s"] < record["round_breakdown"]["verify_s"]
    assert record["round_breakdown"]["draft_forward_s"] == 0
    assert 0 < record["round_breakdown"]["harness_share"] < 1
    assert main(["report", str(tmp_path / "cpu"), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "index.html").exists()
