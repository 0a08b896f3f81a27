"""torchrun-sharded runs and accelerate-launched training, with 2 CPU processes (gloo)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vispec_bench.cli import main
from vispec_bench.results.records import RunStore

ROOT = Path(__file__).resolve().parent.parent
RUN = ["--model", "tiny-llava", "--methods", "oracle,eagle2", "--method-args", "eagle2.draft=random",
       "--dtype", "float32", "--device", "cpu", "--no-progress"]
COMPARED = ("sample_id", "method", "new_ids", "accepted_lengths", "equivalence", "stop_reason")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _comparable(records):
    return sorted(tuple(json.dumps(r[k], sort_keys=True) for k in COMPARED) for r in records)


def _torchrun(args, nproc=2, timeout=300):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(_free_port()), "-m", "vispec_bench", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_torchrun_two_processes_give_the_same_records_as_one(tmp_path):
    args = ["run", *RUN, "--limit", "5", "--max-new-tokens", "16", "--out", str(tmp_path)]
    out = _torchrun([*args, "--run-id", "two"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert main([*args, "--run-id", "one"]) == 0
    two = RunStore(tmp_path / "two")
    assert sorted(p.name for p in two.record_files()) == ["records.rank0.jsonl", "records.rank1.jsonl"]
    assert {r["rank"] for r in two.records()} == {0, 1}
    assert _comparable(two.records()) == _comparable(RunStore(tmp_path / "one").records())
    manifest = two.manifest()
    assert manifest["distributed"]["world_size"] == 2 and len(manifest["distributed"]["rank_devices"]) == 2
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["methods"]["oracle"]["num_samples"] == 5
    assert out.stdout.count("| oracle") == 1  # rank 0 reports once for everyone


def _launch_rank(rank, port, args, env):
    rank_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(port), LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "vispec_bench", *args], cwd=ROOT, env=rank_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_killed_rank_leaves_the_other_shard_intact_and_the_run_resumes(tmp_path):
    args = ["run", *RUN, "--limit", "10", "--max-new-tokens", "48", "--out", str(tmp_path), "--run-id", "cut"]
    env = dict(os.environ, VISPEC_DIST_TIMEOUT="20")
    port = _free_port()
    ranks = [_launch_rank(r, port, args, env) for r in (0, 1)]
    shard1 = tmp_path / "cut" / "records.rank1.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and ranks[1].poll() is None:
        if shard1.exists() and shard1.read_bytes().count(b"\n") >= 2:
            ranks[1].send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    ranks[1].wait(timeout=60)
    if ranks[1].returncode == 0:
        pytest.skip("rank 1 finished before it could be killed")
    ranks[0].send_signal(signal.SIGKILL)  # what torchrun does to the group when a rank dies
    ranks[0].wait(timeout=60)
    store = RunStore(tmp_path / "cut")
    before = store.records()
    assert 2 <= len(before) < 10 * 3
    resume = ["run", *RUN, "--limit", "10", "--max-new-tokens", "48", "--resume", str(tmp_path / "cut")]
    out = _torchrun(resume)
    assert out.returncode == 0, out.stderr[-3000:]
    after = store.records()
    keys = [(r["sample_id"], r["method"], r["repeat"]) for r in after]
    assert len(keys) == len(set(keys)) == 10 * 3  # nothing lost, nothing duplicated
    assert _comparable([r for r in after if r in before]) == _comparable(before)  # finished records untouched
    assert main(["run", *RUN, "--limit", "10", "--max-new-tokens", "48", "--out", str(tmp_path), "--run-id",
                 "whole"]) == 0
    assert _comparable(after) == _comparable(RunStore(tmp_path / "whole").records())


def test_accelerate_trains_with_two_processes_and_the_checkpoint_loads_in_one(tmp_path):
    from conftest import decode_all, easyvqa_samples, prepared, tiny_by_name, trained_draft

    data = trained_draft("tiny-llava", "eagle2").parent / "data-tiny-llava"
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "vispec_bench", "train", "--method", "vispec",
               "--model", "tiny-llava", "--data", str(data), "--out", str(out), "--steps", "30", "--eval-every", "15",
               "--device", "cpu", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("draft checkpoint:") == 1
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[1]["num_processes"] == 2
    checksums = log[-1]["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == pytest.approx(checksums[1], rel=1e-9)
    assert log[-2]["acc_depth1"] > log[0]["acc_depth1"]
    config = json.loads((out / "draft_config.json").read_text())
    assert config["training"]["num_processes"] == 2
    # One process, one device: the checkpoint loads and decodes losslessly.
    _, adapter = tiny_by_name("tiny-llava")
    samples = easyvqa_samples(limit=2)
    method = prepared("vispec", adapter, draft=out)
    assert [r.new_ids for r in decode_all(adapter, method, samples)] == \
        [r.new_ids for r in decode_all(adapter, None, samples)]
