"""Summary numbers against values computed independently from hand-built records."""

import math

from vispec_bench.results.metrics import summarize


def _record(sample, method, accepted, prefill, decode, match=True, score=1.0):
    return {"sample_id": sample, "method": method, "accepted_lengths": accepted, "prefill_s": prefill,
            "decode_s": decode, "num_new_tokens": sum(accepted) + 1, "equivalence": {"exact_match": match},
            "score": score}


def test_summary_matches_hand_computed_values():
    records = [
        _record("s1", "ar", [1] * 9, 0.5, 9.0),
        _record("s2", "ar", [1] * 4, 0.5, 4.0),
        _record("s1", "oracle", [3, 3, 3], 0.5, 3.0),
        _record("s2", "oracle", [2, 2], 0.5, 1.0, match=False, score=0.0),
    ]
    manifest = {"run_id": "x", "config": {"model": "m", "suite": "s", "dtype": "float32",
                                          "methods": [{"name": "ar"}, {"name": "oracle"}]},
                "environment": {"device_name": "cpu"}}
    summary = summarize(records, manifest)["methods"]
    oracle = summary["oracle"]
    assert summary["ar"]["mean_accepted_length"] == 1.0
    assert oracle["mean_accepted_length"] == (9 + 4) / 5
    assert math.isclose(oracle["mean_accepted_length_excl_bonus"], 13 / 5 - 1)
    assert oracle["speedup_decode"] == (9 + 4) / (3 + 1)
    assert oracle["speedup_e2e"] == (9.5 + 4.5) / (3.5 + 1.5)
    assert math.isclose(oracle["speedup_decode_geomean"], math.sqrt(3 * 4))
    assert oracle["exact_match_rate"] == 0.5
    assert oracle["accuracy"] == 0.5
    assert oracle["new_tokens"] == 10 + 5
    assert math.isclose(oracle["tokens_per_s"], 15 / 5.0)


def test_bf16_divergences_are_counted_with_their_dtype_ties():
    records = [
        _record("a", "ar", [1] * 4, 0.1, 1.0),
        _record("a", "spec", [2, 2], 0.1, 0.5, match=False),
        _record("b", "ar", [1] * 4, 0.1, 1.0),
        _record("b", "spec", [2, 2], 0.1, 0.5, match=False),
    ]
    records[1]["equivalence"].update(dtype_tie=True, margin_ulps=1.0)
    records[3]["equivalence"].update(dtype_tie=False, margin_ulps=9.0)
    manifest = {"run_id": "x", "config": {"model": "m", "suite": "s", "dtype": "bfloat16",
                                          "methods": [{"name": "ar"}, {"name": "spec"}]},
                "environment": {"device_name": "cpu"}}
    spec = summarize(records, manifest)["methods"]["spec"]
    assert spec["num_divergences"] == 2 and spec["num_dtype_ties"] == 1 and spec["exact_match_rate"] == 0.0
