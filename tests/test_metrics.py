"""Summary numbers against values computed independently from hand-built records."""

import gzip
import json
import math

import numpy as np
import pytest

from vispec_bench.results.columns import COLUMNS, csv_fields
from vispec_bench.results.metrics import summarize, summary_rows
from vispec_bench.results.records import SCHEMA_VERSION, NewerSchemaError, RunStore, load_records


def _record(sample, method, accepted, prefill, decode, match=True, score=1.0, repeat=0, tokens=None):
    return {"sample_id": sample, "method": method, "repeat": repeat, "accepted_lengths": accepted,
            "prefill_s": prefill, "decode_s": decode,
            "num_new_tokens": tokens if tokens is not None else sum(accepted) + 1,
            "equivalence": {"exact_match": match}, "score": score}


def _manifest(dtype="float32", methods=("ar", "oracle")):
    return {"run_id": "x", "config": {"model": "m", "suite": "s", "dtype": dtype,
                                      "methods": [{"name": m} for m in methods]},
            "environment": {"device_name": "cpu"}}


def test_summary_matches_hand_computed_values():
    records = [
        _record("s1", "ar", [1] * 9, 0.5, 9.0),
        _record("s2", "ar", [1] * 4, 0.5, 4.0),
        _record("s1", "oracle", [3, 3, 3], 0.5, 3.0),
        _record("s2", "oracle", [2, 2], 0.5, 1.0, match=False, score=0.0),
    ]
    summary = summarize(records, _manifest())["methods"]
    oracle = summary["oracle"]
    assert summary["ar"]["mean_accepted_length"] == 1.0
    assert oracle["mean_accepted_length"] == (9 + 4) / 5
    assert math.isclose(oracle["mean_accepted_length_excl_bonus"], 13 / 5 - 1)
    # Same token counts as AR: the per-token speedup is the time ratio.
    assert oracle["speedup_decode"] == pytest.approx((9 + 4) / (3 + 1))
    assert oracle["speedup_e2e"] == pytest.approx((9.5 + 4.5) / (3.5 + 1.5))
    assert math.isclose(oracle["speedup_decode_geomean"], math.sqrt(3 * 4))
    assert oracle["exact_match_rate"] == 0.5
    assert oracle["accuracy"] == 0.5
    assert oracle["new_tokens"] == 10 + 5
    assert math.isclose(oracle["tokens_per_s"], 15 / 5.0)
    assert oracle["num_samples"] == 2 and oracle["num_unpaired"] == 0


def test_speedup_is_per_token_when_a_method_emits_more_tokens_than_ar():
    """At T > 0 a method that runs to 81 tokens where AR stops at 61 must not look slower for it."""
    records = [_record("a", "ar", [1] * 60, 0.5, 6.0), _record("a", "spec", [4] * 20, 0.5, 8.0, match=False)]
    spec = summarize(records, _manifest(methods=("ar", "spec")))["methods"]["spec"]
    # decode tokens: AR 60 in 6 s (10/s), spec 80 in 8 s (10/s): the same throughput.
    assert spec["speedup_decode"] == pytest.approx(1.0)
    assert spec["speedup_e2e"] == pytest.approx((81 / 8.5) / (61 / 6.5))
    assert spec["speedup_decode_geomean"] == pytest.approx(1.0)


def test_unpaired_records_are_named_and_left_out_of_every_figure():
    records = [_record("a", "ar", [1] * 9, 0.5, 9.0), _record("b", "ar", [1] * 9, 0.5, 9.0),
               _record("a", "ar", [1] * 9, 0.5, 9.0, repeat=1),  # its spec repeat 1 never finished
               _record("a", "spec", [3, 3, 3], 0.5, 3.0), _record("b", "spec", [3, 3, 3], 0.5, 3.0),
               _record("c", "spec", [9], 0.5, 0.1)]  # no AR record for sample c
    summary = summarize(records, _manifest(methods=("ar", "spec")))
    spec = summary["methods"]["spec"]
    assert spec["speedup_decode"] == pytest.approx(3.0) and spec["mean_accepted_length"] == 3.0
    assert spec["num_samples"] == 2 and spec["num_unpaired"] == 2
    assert {(u["sample_id"], u["repeat"], u["why"]) for u in summary["unpaired"]} == {
        ("c", 0, "no AR record"), ("a", 1, "no spec record")}
    from vispec_bench.cli import format_summary

    printed = format_summary(summary | {"device": "cpu"})
    assert "unpaired: spec sample c repeat 0: no AR record" in printed


def test_bootstrap_intervals_resample_samples_with_their_repeats():
    rng = np.random.default_rng(1)
    records = []
    for i in range(12):
        for repeat in range(2):
            ar_time, spec_time = 10.0, float(rng.uniform(3.0, 7.0))
            records += [_record(f"s{i}", "ar", [1] * 10, 0.1, ar_time, repeat=repeat),
                        _record(f"s{i}", "spec", [2] * 5, 0.1, spec_time, repeat=repeat)]
    spec = summarize(records, _manifest(methods=("ar", "spec")))["methods"]["spec"]
    low, high = spec["speedup_decode_ci_low"], spec["speedup_decode_ci_high"]
    assert low < spec["speedup_decode"] < high and high - low > 0.1
    assert spec["mean_accepted_length_ci_low"] == spec["mean_accepted_length_ci_high"] == 2.0
    # Independent percentile bootstrap over samples (repeats pooled per sample), same seed and count.
    per_sample_m = np.array([sum(r["decode_s"] for r in records if r["method"] == "spec" and r["sample_id"] == f"s{i}")
                             for i in range(12)])
    rng = np.random.default_rng(0)
    draws = np.concatenate([rng.integers(0, 12, size=(250, 12)) for _ in range(8)])  # 2000 resamples of 12
    ratios = (20.0 * 12) / per_sample_m[draws].sum(axis=1)  # equal token counts: Σt_AR / Σt_m
    assert [low, high] == pytest.approx(list(np.percentile(ratios, [2.5, 97.5])), rel=1e-9)
    one = summarize(records[:2], _manifest(methods=("ar", "spec")))["methods"]["spec"]
    assert one["speedup_decode_ci_low"] is None  # one sample: no interval, never a zero-width one


def test_rows_carry_every_column_of_the_one_table():
    records = [_record("a", "ar", [1] * 4, 0.1, 1.0), _record("a", "spec", [2, 2], 0.1, 0.5)]
    manifest = _manifest(methods=("ar", "spec")) | {"environment": {"device_name": "cpu", "packages": {}}}
    rows = summary_rows(summarize(records, manifest))
    assert set(csv_fields()) <= set(rows[0]) and len({c.name for c in COLUMNS}) == len(COLUMNS)
    assert all(c.definition and c.label for c in COLUMNS)


def test_schema_version_is_written_and_newer_versions_are_refused(tmp_path):
    store = RunStore.create(tmp_path / "r", _manifest())
    store.append(_record("a", "ar", [1], 0.1, 1.0))
    assert store.manifest()["schema_version"] == SCHEMA_VERSION
    assert store.records()[0]["schema_version"] == SCHEMA_VERSION
    old = tmp_path / "old.jsonl"  # version 1: no field at all
    old.write_text(json.dumps(_record("a", "ar", [1], 0.1, 1.0)) + "\n")
    assert load_records(old)[0]["sample_id"] == "a"
    newer = tmp_path / "newer.jsonl.gz"
    with gzip.open(newer, "wt") as handle:
        handle.write(json.dumps(_record("a", "ar", [1], 0.1, 1.0) | {"schema_version": SCHEMA_VERSION + 1}) + "\n")
    with pytest.raises(NewerSchemaError, match=f"schema_version {SCHEMA_VERSION + 1}.*newer vispec-bench"):
        load_records(newer)
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text()) | {"schema_version": 99}
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NewerSchemaError, match="reads versions 1 to"):
        store.manifest()
