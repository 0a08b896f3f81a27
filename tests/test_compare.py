"""Method differences (τ_X − τ_Y, throughput X / Y, paired bootstrap) and the τ-against-image-tokens
plot, on hand-built records in the run-record schema; one tiny run for the `image_tokens` field."""

import csv

import numpy as np
import pytest
import torch

from vispec_bench.engine.adapter import PreparedPrompt
from vispec_bench.engine.split_image_adapter import SplitImageAdapter
from vispec_bench.results.differences import compare, paired_per_sample, run_differences
from vispec_bench.results.records import RunStore
from vispec_bench.results.report import write_report
from vispec_bench.running.runner import image_tokens_per_image


def _record(sample, method, per_round, rounds, decode_s, repeat=0, image_tokens=(64,), compiles=0, engine="eager"):
    accepted = [per_round] * rounds
    record = {"sample_id": sample, "method": method, "repeat": repeat, "engine": engine, "accepted_lengths": accepted,
              "draft_depths": [0 if method == "ar" else 4] * rounds, "num_new_tokens": sum(accepted) + 1,
              "prefill_s": 0.1, "decode_s": decode_s, "compiles": compiles, "lossless": True,
              "method_config_hash": method, "equivalence": {"exact_match": True, "numerical_tie": False},
              "score": 1.0, "num_images": 1}
    if image_tokens is not None:
        record["image_tokens"] = list(image_tokens)
    return record


def _manifest(run_id, methods, model="testbed"):
    return {"run_id": run_id, "created": "2026-12-03T12:00:00", "command": "test",
            "config": {"model": model, "suite": "easyvqa", "dtype": "float32", "max_new_tokens": 64,
                       "temperature": 0.0, "prompt_mode": "long", "methods": [{"name": m} for m in methods]},
            "environment": {"device_name": "cpu-x", "packages": {}, "git": {}, "nvml": {"available": False}}}


def _make_run(root, run_id, records, methods, **manifest):
    store = RunStore.create(root / run_id, _manifest(run_id, methods, **manifest))
    for record in records:
        store.append(record)
    return root / run_id


def _three_methods(num_samples=12, seed=1, image_tokens=(64,)):
    """AR, eagle2 (τ ~ 3) and vispec (τ ~ 4, faster), two repeats per sample; per-sample lengths vary."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(num_samples):
        rounds = int(rng.integers(5, 30))
        for repeat in range(2):
            records += [_record(f"s{i}", "ar", 1, 3 * rounds, 3.0 * rounds, repeat, image_tokens),
                        _record(f"s{i}", "eagle2", 3, rounds, float(rng.uniform(1.2, 1.6)) * rounds, repeat,
                                image_tokens),
                        _record(f"s{i}", "vispec", 4, rounds - rounds // 4, float(rng.uniform(0.9, 1.1)) * rounds,
                                repeat, image_tokens)]
    return records


def _paired_bootstrap(per_sample_columns, statistic):
    """Independent percentile bootstrap: the same draws as vispec_bench/results/uncertainty.py
    (seed 0, 2,000 resamples in chunks of 250), one draw of sample indices for every column."""
    n = len(per_sample_columns[0])
    rng = np.random.default_rng(0)
    draws = np.concatenate([rng.integers(0, n, size=(250, n)) for _ in range(8)])
    sums = [column[draws].sum(axis=1) for column in per_sample_columns]
    return list(np.percentile(statistic(*sums), [2.5, 97.5]))


def test_tau_difference_interval_excludes_zero_when_x_clearly_accepts_more():
    records = _three_methods()
    found = compare(records, "vispec", "eagle2", "eager")
    samples, s = paired_per_sample(records, "vispec", "eagle2", "eager")
    vispec = [r for r in records if r["method"] == "vispec"]
    eagle2 = [r for r in records if r["method"] == "eagle2"]

    def tau(rs):
        return sum(sum(r["accepted_lengths"]) for r in rs) / sum(len(r["accepted_lengths"]) for r in rs)

    assert found["num_samples"] == len(samples) == 12
    assert found["tau_x"] == pytest.approx(4.0) and found["tau_y"] == pytest.approx(tau(eagle2)) == 3.0
    assert found["tau_difference"] == pytest.approx(tau(vispec) - tau(eagle2))
    expected = _paired_bootstrap([s["emitted_x"], s["rounds_x"], s["emitted_y"], s["rounds_y"]],
                                 lambda ex, rx, ey, ry: ex / rx - ey / ry)
    assert [found["tau_difference_ci_low"], found["tau_difference_ci_high"]] == pytest.approx(expected, rel=1e-9)
    assert found["tau_difference_ci_low"] > 0
    assert found["verdict"].startswith("τ: interval excludes 0 (vispec higher)")


def test_identical_methods_differ_by_zero_and_the_interval_contains_zero():
    records = _three_methods()
    twin = [r | {"method": "twin"} for r in records if r["method"] == "eagle2"]
    found = compare(records + twin, "twin", "eagle2", "eager")
    assert found["tau_difference"] == 0.0 and found["throughput_ratio"] == pytest.approx(1.0)
    assert found["tau_difference_ci_low"] <= 0.0 <= found["tau_difference_ci_high"]
    assert found["throughput_ratio_ci_low"] <= 1.0 <= found["throughput_ratio_ci_high"]
    assert found["verdict"] == "τ: not resolved at 12 samples; throughput: not resolved at 12 samples"


def test_one_resample_draws_both_methods_so_what_samples_share_cancels():
    """Samples differ wildly in τ, but X emits exactly one token more per round than Y on every
    sample: paired, τ_X − τ_Y is 1 in every resample; unpaired it would spread by the samples' spread."""
    records = []
    for i in range(10):
        records += [_record(f"s{i}", "y", 1 + i % 5, 10, 1.0), _record(f"s{i}", "x", 2 + i % 5, 10, 1.0)]
    found = compare(records, "x", "y")
    assert [found["tau_difference_ci_low"], found["tau_difference_ci_high"]] == pytest.approx([1.0, 1.0])


def test_throughput_ratio_is_per_decode_token_and_leaves_compiled_pairs_out():
    records = _three_methods(num_samples=6)
    records[2]["compiles"] = 1  # vispec's first record compiled a graph inside its timed decode
    found = compare(records, "vispec", "eagle2", "eager")
    timed_x = [r for r in records if r["method"] == "vispec" and not r["compiles"]]
    timed_y = [r for r in records if r["method"] == "eagle2" and (r["sample_id"], r["repeat"]) != ("s0", 0)]
    per_token = lambda rs: sum(r["num_new_tokens"] - 1 for r in rs) / sum(r["decode_s"] for r in rs)  # noqa: E731
    assert found["throughput_ratio"] == pytest.approx(per_token(timed_x) / per_token(timed_y))
    assert found["num_timed_samples"] == 6  # s0's repeat 1 is still timed
    _, s = paired_per_sample(records, "vispec", "eagle2", "eager")
    expected = _paired_bootstrap([s["tokens_x"], s["decode_s_x"], s["tokens_y"], s["decode_s_y"]],
                                 lambda tx, dx, ty, dy: (tx / dx) / (ty / dy))
    assert [found["throughput_ratio_ci_low"], found["throughput_ratio_ci_high"]] == pytest.approx(expected, rel=1e-9)
    assert found["throughput_ratio_ci_low"] > 1
    assert "throughput: interval excludes 1 (vispec higher)" in found["verdict"]
    # τ still counts the compiled record.
    assert found["tau_x"] == pytest.approx(4.0)


def test_every_speculative_method_is_paired_against_eagle2_on_each_engine():
    records = _three_methods(num_samples=3)
    records += [r | {"engine": "static"} for r in records if r["method"] in ("ar", "eagle2", "vispec")]
    manifest = _manifest("r", ["ar", "eagle2", "vispec"])
    manifest["config"]["engines"] = ["eager", "static"]
    found = run_differences(records, manifest)
    assert [(d["engine"], d["x"], d["y"]) for d in found] == [("eager", "vispec", "eagle2"),
                                                             ("static", "vispec", "eagle2")]
    assert run_differences([r for r in records if r["method"] != "eagle2"], manifest) == []


def test_report_has_a_method_differences_section_and_csv(tmp_path):
    run = _make_run(tmp_path, "both", _three_methods(), ["ar", "eagle2", "vispec"])
    out = write_report([run], tmp_path / "report")
    index = (out / "index.md").read_text()
    assert "## Method differences" in index
    line = next(line for line in index.splitlines() if line.startswith("| both | eager | vispec | eagle2 | 12 |"))
    expected = compare(_three_methods(), "vispec", "eagle2", "eager")
    assert f"{expected['tau_difference']:+.2f} [{expected['tau_difference_ci_low']:+.2f}, " in line
    assert "interval excludes 0" in line
    (row,) = list(csv.DictReader(open(out / "differences.csv")))
    assert (row["x"], row["y"], int(row["num_samples"])) == ("vispec", "eagle2", 12)
    assert float(row["tau_difference"]) == pytest.approx(expected["tau_difference"])
    assert "Method differences" in (out / "index.html").read_text()
    without = _make_run(tmp_path, "no-eagle2", [r for r in _three_methods() if r["method"] != "eagle2"],
                        ["ar", "vispec"])
    out = write_report([without], tmp_path / "report-without")
    assert "Method differences" not in (out / "index.md").read_text() and not (out / "differences.csv").exists()


def test_tau_vs_image_tokens_plot_only_with_two_settings(tmp_path):
    methods = ["ar", "eagle2", "vispec"]
    at_64 = _make_run(tmp_path, "at-64", _three_methods(image_tokens=(64,)), methods)
    at_576 = _make_run(tmp_path, "at-576", _three_methods(seed=2, image_tokens=(576,)), methods, model="testbed-576")
    out = write_report([at_64, at_576], tmp_path / "two")
    assert (out / "tau_vs_image_tokens.png").exists()
    assert "![τ against image tokens per image (64, 576)" in (out / "index.md").read_text()
    out = write_report([at_64], tmp_path / "one")
    assert not (out / "tau_vs_image_tokens.png").exists() and "image tokens" not in (out / "index.md").read_text()
    # Records written before the field existed: the setting is unknown, the plot skipped, nothing fails.
    old = _make_run(tmp_path, "old", _three_methods(seed=3, image_tokens=None), methods, model="testbed-576")
    out = write_report([at_64, old], tmp_path / "old-and-new")
    assert not (out / "tau_vs_image_tokens.png").exists()


def test_split_image_prompts_count_image_tokens_per_image_over_its_runs():
    adapter = SplitImageAdapter.__new__(SplitImageAdapter)  # runs_per_image reads only the global-view id
    adapter.global_image_token_id = 9
    image, glob = [5] * 4, [9] + [5] * 2  # a tile of 4 image tokens; the global-view token, then 2 image tokens
    ids = [1] + [7] + image + [7] + image + glob + [3] + [7] + image + glob + [2]
    spans = [(2, 6), (7, 11), (12, 14), (16, 20), (21, 23)]
    prompt = PreparedPrompt({}, torch.tensor(ids), 2, spans)
    assert image_tokens_per_image(adapter, prompt) == [4 + 4 + 2, 4 + 2]


def test_a_tiny_run_records_the_image_tokens_of_each_image(tmp_path):
    from tests.conftest import tiny_by_name
    from vispec_bench.running.config import RunConfig
    from vispec_bench.running.runner import Runner

    config = RunConfig(model="tiny-llava", methods=["oracle"], limit=1, max_new_tokens=4, dtype="float32",
                       device="cpu")
    runner = Runner(config, out_dir=tmp_path, run_id="r", progress=False, log=lambda m: None)
    records = RunStore(runner.run()).records()
    _, adapter = tiny_by_name("tiny-llava")
    (sample,) = runner.samples
    prompt = adapter.build_prompt(sample.messages, sample.images)
    image_token_count = int((prompt.input_ids == adapter.image_token_id).sum())
    assert image_token_count > 0 and {r["sample_id"] for r in records} == {sample.sample_id}
    assert {tuple(r["image_tokens"]) for r in records} == {(image_token_count,)}
