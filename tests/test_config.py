"""One configuration surface: flags generated from the config dataclasses, `--config FILE.toml`
under the flags, `run --resume DIR` with the stored config, and the CLI's two kinds of error."""

import dataclasses
import json

import pytest

from vispec_bench import cli
from vispec_bench.cli import build_parser, main, run_config_from_args
from vispec_bench.errors import InputError, UserError
from vispec_bench.results.records import load_records
from vispec_bench.running.config import BuildConfig, GenDataConfig, RunConfig, TrainConfig
from vispec_bench.running.config_flags import build_config, given_values

TINY = ["--model", "tiny-llava", "--methods", "oracle", "--max-new-tokens", "6", "--dtype", "float32",
        "--device", "cpu", "--no-progress", "--no-profile", "--no-warmup"]


def _resolve(config_class, argv, command=""):
    return build_config(config_class, given_values(build_parser().parse_args(argv), config_class), command=command)


def test_every_field_is_a_flag_with_the_dataclass_default():
    train = _resolve(TrainConfig, ["train", "--method", "medusa", "--model", "m", "--data", "d", "--out", "o"])
    assert train == TrainConfig(method="medusa", model="m", data="d", out="o")
    assert train.dtype == "float32"  # one default, the library's, whether called from the CLI or not
    assert _resolve(GenDataConfig, ["gen-data", "--model", "m", "--out", "o"]) == GenDataConfig(model="m")
    assert _resolve(BuildConfig, ["testbed", "build"]) == BuildConfig()
    assert _resolve(RunConfig, ["run"]) == RunConfig()
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in dataclasses.fields(TrainConfig):  # weight_decay and feature_cache_mb had no flag before
        assert "--" + f.name.replace("_", "-") in help_text, f.name


def test_boolean_flags_flip_their_defaults():
    run = _resolve(RunConfig, ["run", "--no-warmup", "--no-profile", "--fixtures"])
    assert (run.warmup, run.profile_rounds, run.fixtures) == (False, False, True)
    build = _resolve(BuildConfig, ["testbed", "build", "--no-install", "--train-tower", "--pretrain-steps", "3"])
    assert (build.install, build.vision_train_tower, build.pretrain_steps) == (False, True, 3)
    train = _resolve(TrainConfig, ["train", "--method", "a", "--model", "m", "--data", "d", "--out", "o", "--resume",
                                   "--method-args", "a.x=1", "a.y=2"])
    assert train.resume is True and train.method_args == ["a.x=1", "a.y=2"]


def test_config_file_is_read_and_flags_override_it(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "tiny-llava"\nmethods = ["oracle", "eagle2"]\nmax-new-tokens = 9\nlimit = 3\n'
                    'temperature = 1\nwarmup = false\nmethod_args = ["oracle.depth=2"]\n')
    run = _resolve(RunConfig, ["run", "--config", str(path), "--limit", "4"])
    assert (run.model, run.methods, run.max_new_tokens, run.limit) == ("tiny-llava", ["oracle", "eagle2"], 9, 4)
    assert run.temperature == 1.0 and run.warmup is False and run.method_args == ["oracle.depth=2"]
    train_file = tmp_path / "train.toml"
    train_file.write_text('method = "medusa"\nmodel = "m"\ndata = "d"\nout = "o"\nsteps = 7\n')
    train = _resolve(TrainConfig, ["train", "--config", str(train_file), "--steps", "8"])
    assert (train.method, train.steps) == ("medusa", 8)


@pytest.mark.parametrize("content, message", [
    ("max_new_token = 3\n", "unknown key 'max_new_token' for this command. Did you mean 'max_new_tokens'"),
    ('limit = "3"\n', "limit must be int or absent, got '3'"),
    ('dtype = "fp8"\n', "dtype must be one of auto, float32, bfloat16, float16, got 'fp8'"),
    ("warmup = 1\n", "warmup must be a boolean"),
    ("limit = \n", "is not valid TOML"),
])
def test_config_file_mistakes_are_named(tmp_path, content, message):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        _resolve(RunConfig, ["run", "--config", str(path)])


def test_resolved_config_from_file_and_flags_is_what_the_manifest_records(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text('max_new_tokens = 5\nlimit = 2\nseed = 3\n')
    assert main(["run", *TINY, "--config", str(path), "--limit", "1", "--out", str(tmp_path), "--run-id", "f"]) == 0
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert (manifest["config"]["max_new_tokens"], manifest["config"]["seed"]) == (6, 3)  # flag over file
    assert len(manifest["config"]["sample_ids"]) == 1
    assert manifest["run_config"] == dataclasses.asdict(run_config_from_args(build_parser().parse_args(
        ["run", *TINY, "--config", str(path), "--limit", "1"])))


def _cut(run_dir, keep: int) -> None:
    """What an interrupted run leaves: the first `keep` records and no summary."""
    lines = (run_dir / "records.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "records.jsonl").write_text("".join(lines[:keep]))
    (run_dir / "summary.json").unlink()


def _ids(records):
    return sorted((r["sample_id"], r["method"], tuple(r["new_ids"])) for r in records)


def test_resume_alone_takes_the_stored_config_and_differing_flags_are_named(tmp_path, capsys):
    assert main(["run", *TINY, "--limit", "2", "--seed", "4", "--method-args", "oracle.depth=2",
                 "--out", str(tmp_path), "--run-id", "r"]) == 0
    run_dir = tmp_path / "r"
    whole = load_records(run_dir / "records.jsonl")
    _cut(run_dir, 1)
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 0  # no flag retyped
    assert _ids(load_records(run_dir / "records.jsonl")) == _ids(whole)
    assert (run_dir / "summary.json").exists()

    # Agreeing flags are accepted; differing ones are refused, each named, before anything runs.
    assert main(["run", "--resume", str(run_dir), "--no-progress", "--limit", "2", "--model", "tiny-llava"]) == 0
    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir), "--max-new-tokens", "7", "--seed", "4", "--temperature", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "max_new_tokens: stored 6, given 7" in err and "temperature: stored 0.0, given 0.5" in err
    assert "seed" not in err.split("differ")[1] and "Traceback" not in err

    # A run made before manifests stored `run_config` resumes from its resolved config.
    manifest = json.loads((run_dir / "manifest.json").read_text())
    del manifest["run_config"]
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    _cut(run_dir, 3)
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 0
    assert _ids(load_records(run_dir / "records.jsonl")) == _ids(whole)


def test_user_errors_are_one_line_and_exit_2(capsys, tmp_path):
    assert main(["run", "--methods", "eagel2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown method 'eagel2'") and err.count("\n") == 1
    assert main(["run", *TINY, "--limit", "0", "--out", str(tmp_path)]) == 2
    assert "--limit must be >= 1, got 0" in capsys.readouterr().err
    assert main(["train", "--method", "medusa"]) == 2
    assert "train needs --model" in capsys.readouterr().err


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   KeyError("a bug's missing key")])
def test_unexpected_errors_keep_their_traceback_and_exit_1(monkeypatch, capsys, error):
    def failing(args):
        raise error

    monkeypatch.setattr(cli, "cmd_list", failing)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and "in failing" in err
    assert str(error).strip("'\"") in err
    assert not issubclass(type(error), UserError)
