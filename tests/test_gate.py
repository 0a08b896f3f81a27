"""The regression gate (`check`), one test per way it was fooled (issue 14's table): each builds
runs that must fail and runs that must pass, from hand-built records in a temporary directory."""

import pytest

from vispec_bench.cli import main
from vispec_bench.results.check import run_check
from vispec_bench.results.records import RunStore

AR_DECODE = 10.0  # seconds per sample for AR; a method at 5.0 s is a 2.0x speedup


def _manifest(run_id, dtype="float32", temperature=0.0, methods=("spec",), **config):
    return {"run_id": run_id, "created": "2026-11-22T12:00:00", "command": "test",
            "config": {"model": "m", "suite": "s", "dtype": dtype, "max_new_tokens": 16, "temperature": temperature,
                       "top_p": 1.0, "top_k": 0, "prompt_mode": "long", "warmup": True, "sample_ids_hash": "abc",
                       "methods": [{"name": "ar"}] + [{"name": m} for m in methods]} | config,
            "environment": {"device_name": "cpu-x", "packages": {"torch": "x"}, "git": {"commit": "deadbeef"}}}


def _record(sample, method, decode, repeat=0, equivalence=None, accepted=(3, 3, 2, 2)):
    accepted = [1] * 10 if method == "ar" else list(accepted)
    return {"sample_id": sample, "method": method, "repeat": repeat, "accepted_lengths": accepted,
            "draft_depths": [3] * len(accepted), "prefill_s": 1.0, "decode_s": decode,
            "num_new_tokens": sum(accepted) + 1, "lossless": True,
            "method_config_hash": "har" if method == "ar" else f"h-{method}",
            "equivalence": equivalence or {"exact_match": True, "numerical_tie": False}, "score": 1.0}


def make_run(root, run_id, spec_times, samples=("a", "b", "c"), methods=("spec",), ar_samples=None,
             divergences=None, draft_sha256=None, **manifest):
    """spec_times[r]: the methods' decode time per sample in repeat r; divergences[(sample, repeat)]:
    the equivalence dict of that method record."""
    store = RunStore.create(root / run_id, _manifest(run_id, methods=methods, **manifest))
    for repeat, spec_time in enumerate(spec_times):
        for sample in ar_samples or samples:
            store.append(_record(sample, "ar", AR_DECODE, repeat))
        for sample in samples:
            for method in methods:
                record = _record(sample, method, spec_time, repeat, (divergences or {}).get((sample, repeat)))
                if draft_sha256:
                    record["draft"] = {"path": "/drafts/spec", "sha256": draft_sha256}
                store.append(record)
    return root / run_id


def _baseline(tmp_path, **options):
    path = tmp_path / "baseline.json"
    base = make_run(tmp_path, "base", [5.0] * 5, **options)
    assert run_check(str(base), str(path), write=True, log=lambda m: None) == 0
    return path


def _check(run, baseline, **options):
    lines = []
    code = run_check(str(run), str(baseline), log=lines.append, **options)
    return code, "\n".join(lines)


TIE = {"exact_match": False, "numerical_tie": True, "margin": 5e-5}
WRONG = {"exact_match": False, "numerical_tie": False, "margin": 2.5}


def test_one_float32_tie_does_not_excuse_a_wrong_sample(tmp_path):
    baseline = _baseline(tmp_path)
    ties = {("a", r): TIE for r in range(3)}
    code, out = _check(make_run(tmp_path, "tie+wrong", [5.0] * 3, divergences=ties | {("b", 1): WRONG}), baseline)
    assert code == 1 and "1 unexplained divergence(s): b#1" in out
    code, out = _check(make_run(tmp_path, "tie", [5.0] * 3, divergences=ties), baseline)
    assert code == 0 and "1 tie sample(s)" in out


def test_a_baseline_method_missing_from_the_run_is_reported_and_fails_strict(tmp_path):
    baseline = _baseline(tmp_path, methods=("spec", "other"))
    partial = make_run(tmp_path, "no-other", [5.0] * 3)
    code, out = _check(partial, baseline, strict=True)
    assert code == 1 and "m|s|other|float32" in out and "missing" in out
    code, out = _check(partial, baseline)
    assert code == 0 and "1 baseline method(s) missing" in out
    assert _check(make_run(tmp_path, "both", [5.0] * 3, methods=("spec", "other")), baseline, strict=True)[0] == 0


def test_a_partial_run_is_compared_on_the_samples_it_finished(tmp_path):
    baseline = _baseline(tmp_path)
    partial = make_run(tmp_path, "partial", [6.25] * 3, samples=("a", "b"), ar_samples=("a", "b", "c"))
    code, out = _check(partial, baseline, strict=True)
    assert code == 1 and "not comparable" in out and "finished_ids_hash" in out
    assert _check(make_run(tmp_path, "full", [5.0] * 3), baseline, strict=True)[0] == 0


@pytest.mark.parametrize("setting", [{"prompt_mode": "short"}, {"top_p": 0.9}, {"top_k": 20}, {"warmup": False},
                                     {"split": "validation"}, {"dataset_path": "/data/other"}, {"revision": "v2"}])
def test_a_run_with_other_settings_is_not_comparable_not_a_regression(tmp_path, setting):
    baseline = _baseline(tmp_path)
    other = make_run(tmp_path, "other", [7.0] * 3, accepted=(2, 2, 2, 2, 2), **setting)  # lower τ, slower
    code, out = _check(other, baseline)
    assert code == 0 and "not comparable" in out and "regression" not in out
    name = next(iter(setting))
    assert f"{name}: " in out
    assert _check(other, baseline, strict=True)[0] == 1


def test_another_draft_checkpoint_is_not_comparable(tmp_path):
    baseline = _baseline(tmp_path, draft_sha256="d1")
    code, out = _check(make_run(tmp_path, "d2", [5.0] * 3, draft_sha256="d2"), baseline, strict=True)
    assert code == 1 and "draft_sha256: d1 -> d2" in out
    assert _check(make_run(tmp_path, "d1", [5.0] * 3, draft_sha256="d1"), baseline, strict=True)[0] == 0


def test_one_very_slow_repeat_cannot_excuse_itself(tmp_path):
    baseline = _baseline(tmp_path)
    slow = make_run(tmp_path, "slow", [5.0, 5.0, 10.87])  # the last repeat at 0.92x: -54 %
    code, out = _check(slow, baseline)
    assert code == 1 and "regression" in out
    assert _check(make_run(tmp_path, "steady", [5.0, 5.0, 5.2]), baseline)[0] == 0


def test_noise_comes_from_the_baseline_repeats(tmp_path):
    path = tmp_path / "baseline.json"
    noisy = make_run(tmp_path, "noisy-base", [4.0, 5.0, 6.5, 5.5, 4.5])  # baseline median 2.0x, wide spread
    run_check(str(noisy), str(path), write=True, log=lambda m: None)
    code, out = _check(make_run(tmp_path, "a-bit-slower", [5.8] * 3), path)  # -14 %, inside the baseline's 2σ
    assert code == 0 and "baseline median of 5 repeats" in out
    with pytest.raises(ValueError, match=">= 5 repeats"):
        run_check(str(make_run(tmp_path, "three", [5.0] * 3)), str(tmp_path / "b2.json"), write=True,
                  log=lambda m: None)


def test_a_correct_method_at_temperature_above_0_passes_without_matching_ar(tmp_path):
    baseline = _baseline(tmp_path, temperature=0.7)
    differing = {(s, r): WRONG for s in "abc" for r in range(3)}  # sampled ids differ from AR's
    assert _check(make_run(tmp_path, "t07", [5.0] * 3, divergences=differing, temperature=0.7), baseline)[0] == 0
    greedy = _baseline(tmp_path / "greedy")
    assert _check(make_run(tmp_path, "t0", [5.0] * 3, divergences=differing), greedy)[0] == 1


def _refereed(verdict):
    return {"exact_match": False, "numerical_tie": False, "dtype_tie": verdict == "dtype_tie", "margin": 0.375,
            "margin_ulps": 3.0, "referee": {"verdict": verdict, "float32_pair_gap": 0.02, "logit_error": 0.05}}


def test_bf16_divergences_pass_only_when_the_float32_referee_calls_them_rounding(tmp_path):
    baseline = _baseline(tmp_path, dtype="bfloat16")
    failed = {("a", 0): _refereed("failure")}
    code, out = _check(make_run(tmp_path, "bf16-bad", [5.0] * 3, divergences=failed, dtype="bfloat16"), baseline)
    assert code == 1 and "a#0" in out
    # a divergence flagged by the old ULP rule but never refereed is not excused either
    old_rule = {("a", 0): {"exact_match": False, "dtype_tie": True, "margin_ulps": 1.0, "numerical_tie": False}}
    assert _check(make_run(tmp_path, "bf16-ulp", [5.0] * 3, divergences=old_rule, dtype="bfloat16"), baseline)[0] == 1
    rounding = {("a", 0): _refereed("dtype_tie"), ("c", 2): _refereed("dtype_tie")}
    code, out = _check(make_run(tmp_path, "bf16-ok", [5.0] * 3, divergences=rounding, dtype="bfloat16"), baseline)
    assert code == 0 and "2 tie sample(s)" in out


def test_all_decode_times_zero_is_a_clear_error(tmp_path, capsys):
    baseline = _baseline(tmp_path)
    zero = make_run(tmp_path, "zero", [0.0] * 3)
    code = main(["check", str(zero), "--baseline", str(baseline)])
    err = capsys.readouterr().err
    assert code == 2 and "decode time (decode_s)" in err and "is 0" in err and "Traceback" not in err
