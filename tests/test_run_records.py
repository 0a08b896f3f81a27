"""Run records: the three files, resume after interruption, corrupt lines, config mismatch."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vispec_bench.cli import main
from vispec_bench.running.config import RunConfig
from vispec_bench.results.records import ConfigMismatchError, CorruptRecordsError, RunStore, load_records
from vispec_bench.running.runner import Runner

SMALL = ["--model", "tiny-qwen25vl", "--methods", "oracle", "--suite", "easyvqa", "--max-new-tokens", "16",
         "--dtype", "float32", "--device", "cpu", "--no-progress"]
COMPARED = ("sample_id", "method", "new_ids", "accepted_lengths", "draft_depths", "equivalence", "stop_reason", "answer")


def _comparable(records):
    return sorted((tuple(json.dumps(r[k], sort_keys=True) for k in COMPARED) for r in records))


def test_run_writes_manifest_records_and_summary(tmp_path, capsys):
    assert main(["run", *SMALL, "--limit", "2", "--out", str(tmp_path), "--run-id", "r1"]) == 0
    run_dir = tmp_path / "r1"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    records = load_records(run_dir / "records.jsonl")
    assert manifest["config"]["model"] == "tiny-qwen25vl" and len(manifest["config"]["sample_ids"]) == 2
    assert {"commit", "dirty"} <= set(manifest["environment"]["git"])
    assert manifest["environment"]["nvml"]["available"] in (True, False)
    assert set(summary) >= {"run_id", "model", "suite", "methods"}
    for name in ("ar", "oracle"):
        assert set(summary["methods"][name]) >= {"num_samples", "new_tokens", "mean_accepted_length",
                                                 "speedup_decode", "speedup_e2e", "exact_match_rate"}
    assert summary["methods"]["ar"]["mean_accepted_length"] == 1.0
    assert summary["methods"]["oracle"]["exact_match_rate"] == 1.0
    assert summary["methods"]["oracle"]["mean_accepted_length"] > 1.0
    assert len(records) == 4 and all(r["prefill_s"] > 0 and r["decode_s"] >= 0 for r in records)
    assert "| oracle" in capsys.readouterr().out


def test_interrupted_run_resumes_to_the_same_records(tmp_path, monkeypatch):
    config = RunConfig(model="tiny-llava", methods=["oracle"], limit=3, max_new_tokens=12, dtype="float32",
                       device="cpu")
    full = Runner(config, out_dir=tmp_path, run_id="full", progress=False, log=lambda m: None).run()

    appended = []
    original_append = RunStore.append

    def append_then_die(self, record):
        original_append(self, record)
        appended.append(record)
        if len(appended) == 3:
            raise KeyboardInterrupt  # killed right after the 3rd record hit the disk

    monkeypatch.setattr(RunStore, "append", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        Runner(config, out_dir=tmp_path, run_id="cut", progress=False, log=lambda m: None).run()
    monkeypatch.setattr(RunStore, "append", original_append)
    assert len(load_records(tmp_path / "cut" / "records.jsonl")) == 3
    Runner(config, resume=tmp_path / "cut", progress=False, log=lambda m: None).run()
    resumed = load_records(tmp_path / "cut" / "records.jsonl")
    assert len(resumed) == 6
    assert _comparable(resumed) == _comparable(load_records(full / "records.jsonl"))


def test_killed_process_resumes_without_losing_or_repeating_a_sample(tmp_path):
    args = [*SMALL, "--model", "tiny-llava", "--limit", "12", "--max-new-tokens", "48", "--out", str(tmp_path)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "vispec_bench", "run", *args, "--run-id", "killed"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    records_path = tmp_path / "killed" / "records.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if records_path.exists() and records_path.read_bytes().count(b"\n") >= 5:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be killed")
    killed_count = len(load_records(records_path))
    assert 5 <= killed_count < 24
    assert main(["run", *args, "--resume", str(tmp_path / "killed")]) == 0
    assert main(["run", *args, "--run-id", "whole"]) == 0
    resumed = load_records(records_path)
    keys = [(r["sample_id"], r["method"]) for r in resumed]
    assert len(keys) == len(set(keys)) == 24
    assert _comparable(resumed) == _comparable(load_records(tmp_path / "whole" / "records.jsonl"))


def test_corrupt_record_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"sample_id": "a", "method": "ar"}\n{"sample_id": "b", "meth\n')
    with pytest.raises(CorruptRecordsError, match=r"records.jsonl:2 "):
        load_records(path)
    path.write_text('{"sample_id": "a", "method": "ar"}\n[1, 2]\n')
    with pytest.raises(CorruptRecordsError, match=r":2 is JSON but not a run record"):
        load_records(path)


def test_resume_with_a_different_config_is_refused(tmp_path):
    config = RunConfig(model="tiny-llava", methods=["oracle"], limit=1, max_new_tokens=4, dtype="float32",
                       device="cpu")
    run_dir = Runner(config, out_dir=tmp_path, run_id="r", progress=False, log=lambda m: None).run()
    changed = RunConfig(model="tiny-llava", methods=["oracle"], limit=1, max_new_tokens=8, dtype="float32",
                        device="cpu")
    with pytest.raises(ConfigMismatchError, match="max_new_tokens: stored 4, now 8"):
        Runner(changed, resume=run_dir, progress=False, log=lambda m: None)


def test_new_run_never_overwrites_an_existing_one(tmp_path):
    assert main(["run", *SMALL, "--limit", "1", "--out", str(tmp_path), "--run-id", "same"]) == 0
    assert main(["run", *SMALL, "--limit", "1", "--out", str(tmp_path), "--run-id", "same"]) == 2


def test_unknown_method_on_the_command_line_exits_with_a_hint(capsys):
    assert main(["run", "--methods", "eagel2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'eagel2'" in err


def test_bf16_divergences_from_ar_are_near_ties_in_the_dtype(tmp_path):
    """In bf16 a tree forward and a one-token forward round differently; a correct engine can
    only diverge from AR where the float32 referee finds the two tokens closer than rounding."""
    args = ["run", "--model", "tiny-llava", "--methods", "oracle", "--limit", "6", "--max-new-tokens", "48",
            "--dtype", "bfloat16", "--device", "cpu", "--out", str(tmp_path), "--run-id", "bf", "--no-progress",
            "--no-profile"]
    assert main(args) == 0
    records = load_records(tmp_path / "bf" / "records.jsonl")
    for record in records:
        match = record["equivalence"]
        if not match["exact_match"]:
            referee = match["referee"]
            assert match["dtype_tie"] and referee["float32_pair_gap"] < referee["logit_error"], match
    summary = json.loads((tmp_path / "bf" / "summary.json").read_text())["methods"]["oracle"]
    assert summary["num_divergences"] >= 1 and summary["num_unexplained_divergences"] == 0
