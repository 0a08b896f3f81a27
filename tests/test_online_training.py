"""`train --online`: the target answers during training (no corpus on disk), teacher signals are
recomputed at every step, `--epochs` with `--snapshot-epochs`, and `--resume` regenerates the answers."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

import vispec_bench.drafts.online as online_module
import vispec_bench.drafts.training as training_module
from conftest import GREEDY, decode_all, easyvqa_samples, prepared, tiny_by_name
from vispec_bench.cli import main
from vispec_bench.drafts.datagen import GenDataConfig, build_dataset, generate_data
from vispec_bench.drafts.training import TrainConfig, split_rows, train
from vispec_bench.drafts.vocab import frequent_tokens
from vispec_bench.errors import InputError
from vispec_bench.plugins.suite import make_suite
from vispec_bench.results.records import load_records

NUM_PROMPTS, CAP = 4, 10  # 3 training rows + 1 held out (eval_fraction 0.1 of 4 rounds to 1)
ONLINE = dict(model="tiny-llava", online=True, suite="easyvqa", limit=NUM_PROMPTS, max_new_tokens=CAP,
              dtype="float32", device="cpu", lr=3e-3, warmup_steps=2)
QUIET = dict(progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def gen_data_dir(tmp_path_factory):
    """gen-data's output for the prompts the online runs use (same suite, limit, seed, cap)."""
    out = tmp_path_factory.mktemp("gen") / "data"
    generate_data(GenDataConfig(model="tiny-llava", limit=NUM_PROMPTS, max_new_tokens=CAP, dtype="float32",
                                device="cpu"), out, progress=False)
    return out


class Spy:
    """Counts the target's answer generations and records every teacher-feature computation."""

    def __init__(self, monkeypatch):
        self.generations, self.features = 0, []
        real_decode, real_features = online_module.decode, training_module.teacher_features

        def decode(*args, **kwargs):
            self.generations += 1
            return real_decode(*args, **kwargs)

        def teacher_features(adapter, messages, images, answer_ids):
            self.features.append((prompt_key(messages, images), list(answer_ids)))
            return real_features(adapter, messages, images, answer_ids)

        monkeypatch.setattr(online_module, "decode", decode)
        monkeypatch.setattr(training_module, "teacher_features", teacher_features)


def prompt_key(messages, images) -> str:
    """A prompt's identity: two easy-VQA prompts may ask the same question of different images."""
    return json.dumps(messages) + "".join(hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()
                                          for image in images)


def gen_data_answers(data_dir) -> dict[str, list[int]]:
    """gen-data's answers by prompt key."""
    samples = {s.sample_id: s for s in make_suite("easyvqa", "long", split="train").select(NUM_PROMPTS, 0)}
    return {prompt_key(row["messages"], samples[row["sample_id"]].images): row["answer_ids"]
            for row in load_records(data_dir / "rows.jsonl")}


def _no_model(*args, **kwargs):
    raise AssertionError("the target was loaded before the settings were checked")


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_online_training_writes_no_corpus_and_trains_on_the_engines_greedy_answers(tmp_path, monkeypatch,
                                                                                   gen_data_dir):
    spy = Spy(monkeypatch)
    out = tmp_path / "online"
    train(TrainConfig(method="eagle2", out=str(out), steps=6, eval_every=3, save_every=6,
                      method_args=["eagle2.vocab=4"], **ONLINE), **QUIET)
    assert sorted(p.name for p in out.iterdir()) == ["draft.safetensors", "draft_config.json", "train_log.jsonl",
                                                     "trainer_state.pt"]
    training = json.loads((out / "draft_config.json").read_text())["training"]
    assert training["online"] is True and training["prompt_source"]["suite"] == "easyvqa"
    assert training["answers_generated"] == NUM_PROMPTS and training["generation_s"] > 0
    assert all(entry["online"] is True for entry in _log(out))
    # Each prompt answered once (3 training rows over 2 epochs + the held-out row evaluated 3 times) ...
    assert spy.generations == NUM_PROMPTS
    # ... while teacher features are recomputed at every use: 6 steps + 3 evaluations of 1 row.
    assert len(spy.features) == 6 + 3
    # The answers trained on are gen-data's for the same prompts (greedy, the same engine).
    stored = gen_data_answers(gen_data_dir)
    used = dict(spy.features)
    assert len(used) == NUM_PROMPTS and used == {key: stored[key] for key in used}
    # The reduced draft vocabulary is fitted to the answers of the training prompts, not the held-out one
    # (with these answers, 4 tokens is a size at which the held-out answer would change the map).
    samples = make_suite("easyvqa", "long", split="train").select(NUM_PROMPTS, 0)
    train_rows, _ = split_rows([s.sample_id for s in samples], 0.1, 0)
    _, adapter = tiny_by_name("tiny-llava")
    expected = frequent_tokens([stored[prompt_key(samples[i].messages, samples[i].images)] for i in train_rows], 4,
                               list(adapter.eos_token_ids))
    assert torch.equal(load_file(out / "draft.safetensors")["token_map"], expected)

    # From a gen-data directory: its prompts and images only. Its stored answers, replaced by
    # nonsense here, are not what the target trains the draft on.
    rows = load_records(gen_data_dir / "rows.jsonl")
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (tampered / "rows.jsonl").write_text("".join(json.dumps({**row, "answer_ids": [5, 6, 7]}) + "\n" for row in rows))
    build_dataset(tampered, make_suite("easyvqa", "long", split="train").select(NUM_PROMPTS, 0))
    spy.features.clear()
    out_data = tmp_path / "online-data"
    config = {**ONLINE, "suite": None, "data": str(tampered)}
    train(TrainConfig(method="eagle2", out=str(out_data), steps=3, eval_every=3, **config), **QUIET)
    used = dict(spy.features)
    assert len(used) == NUM_PROMPTS and used == {key: stored[key] for key in used}
    assert json.loads((out_data / "draft_config.json").read_text())["training"]["prompt_source"] == \
        {"data": str(tampered)}


def test_epochs_write_a_loadable_snapshot_per_listed_epoch(tmp_path, gen_data_dir):
    out = tmp_path / "ep"
    args = ["train", "--method", "eagle2", "--model", "tiny-llava", "--online", "--suite", "easyvqa", "--limit",
            str(NUM_PROMPTS), "--max-new-tokens", str(CAP), "--epochs", "2", "--snapshot-epochs", "1,2", "--lr",
            "3e-3", "--warmup-steps", "2", "--device", "cpu", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    configs = [json.loads((out / f"epoch-{e}" / "draft_config.json").read_text()) for e in (1, 2)]
    final_config = json.loads((out / "draft_config.json").read_text())
    for config in configs:  # a snapshot describes its draft as the final checkpoint does (kind, options, target)
        assert config["method"] == "eagle2"
        assert {k: v for k, v in config.items() if k != "training"} == \
            {k: v for k, v in final_config.items() if k != "training"}
    first, second = (config["training"] for config in configs)
    assert (first["epoch"], first["step"], second["epoch"], second["step"]) == (1, 3, 2, 6)
    assert second["steps"] == 6 and second["steps_per_epoch"] == 3
    weights = [load_file(out / f"epoch-{e}" / "draft.safetensors") for e in (1, 2)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    final = load_file(out / "draft.safetensors")
    assert all(torch.equal(final[k], weights[1][k]) for k in final)  # the last epoch is the final draft
    _, adapter = tiny_by_name("tiny-llava")
    samples = easyvqa_samples(limit=1)
    ar = decode_all(adapter, None, samples, max_new_tokens=12)
    for epoch in (1, 2):
        method = prepared("eagle2", adapter, draft=out / f"epoch-{epoch}")
        assert [r.new_ids for r in decode_all(adapter, method, samples, 12, GREEDY)] == [r.new_ids for r in ar]
    assert [entry.get("epoch") for entry in _log(out)] == [None, 1, 2]

    # Offline training snapshots its epochs the same way.
    offline = tmp_path / "offline"
    train(TrainConfig(method="eagle2", model="tiny-llava", data=str(gen_data_dir), out=str(offline), steps=5,
                      snapshot_epochs=["1"], dtype="float32", device="cpu"), **QUIET)
    training = json.loads((offline / "epoch-1" / "draft_config.json").read_text())["training"]
    assert (training["online"], training["epoch"], training["step"], training["answers_generated"]) == \
        (False, 1, 3, 0)
    assert sorted(p.name for p in offline.iterdir() if p.is_dir()) == ["epoch-1"]

    # The scaling report: a point per snapshot, the offline draft as a reference line, τ from the raw counts.
    from reports import training_scaling

    report = tmp_path / "report"
    training_scaling.main([f"eagle2={out}", "--reference", f"eagle2={offline}", "--model", "tiny-llava", "--samples",
                           "1", "--max-new-tokens", "8", "--device", "cpu", "--out", str(report)])
    scaling = json.loads((report / "scaling.json").read_text())
    points, reference = scaling["methods"]["eagle2"], scaling["references"]["eagle2"]
    assert [(p["epoch"], p["step"]) for p in points] == [(1, 3), (2, 6)] and reference["step"] == 5
    for point in points + [reference]:
        assert point["tau"] == pytest.approx(sum(point["emitted"]) / sum(point["rounds"])) and point["exact_match"] == 1
    assert (report / "scaling.png").stat().st_size > 0 and "(reference)" in (report / "README.md").read_text()


def test_online_resume_regenerates_the_answers_and_ends_where_an_uninterrupted_run_ends(tmp_path, monkeypatch):
    """Medusa (cross-entropy heads on the same TeacherFeatures) trains online too."""
    config = dict(method="medusa", steps=4, eval_every=4, save_every=2, **ONLINE)
    whole = tmp_path / "whole"
    train(TrainConfig(out=str(whole), **config), **QUIET)
    with pytest.raises(FileExistsError, match="--resume"):  # refused before the target answers anything
        train(TrainConfig(out=str(whole), **config), model_loader=_no_model, **QUIET)

    cut = tmp_path / "cut"
    real = training_module.OnlineFeatureSource.__getitem__
    calls = []

    def interrupted(self, index):  # stops in step 3, after step 2's checkpoint
        calls.append(index)
        if len(calls) == 1 + 2 + 1:  # the step-0 evaluation, steps 1 and 2, then step 3
            raise KeyboardInterrupt
        return real(self, index)

    monkeypatch.setattr(training_module.OnlineFeatureSource, "__getitem__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(cut), **config), **QUIET)
    monkeypatch.setattr(training_module.OnlineFeatureSource, "__getitem__", real)
    assert torch.load(cut / "trainer_state.pt", weights_only=True)["step"] == 2
    spy = Spy(monkeypatch)
    train(TrainConfig(out=str(cut), resume=True, **config), **QUIET)
    assert torch.load(cut / "trainer_state.pt", weights_only=True)["step"] == 4
    assert [entry["step"] for entry in _log(cut)] == [0, 4]
    # The resumed run answered again only what it met: the rows of steps 3 and 4, and the held-out row.
    assert 2 <= spy.generations <= 3 and _log(cut)[-1]["answers_generated"] == spy.generations
    resumed, uninterrupted = load_file(cut / "draft.safetensors"), load_file(whole / "draft.safetensors")
    assert all(torch.allclose(resumed[k], uninterrupted[k], atol=1e-6) for k in resumed)


@pytest.mark.parametrize("flags, message", [
    (["--online"], "--online needs exactly one prompt source: --data DIR"),
    (["--online", "--suite", "easyvqa", "--data", "d"], "got --data d and --suite easyvqa"),
    ([], "train needs --data DIR"),
    (["--suite", "easyvqa"], "--suite easyvqa is a prompt source of --online training"),
    (["--online", "--suite", "easyvqa", "--epochs", "2", "--steps", "5"], "give --steps or --epochs, not both"),
    (["--online", "--suite", "easyvqa", "--epochs", "1", "--snapshot-epochs", "first"], "whole epoch numbers"),
    (["--online", "--suite", "easyvqa", "--limit", "4", "--epochs", "2", "--snapshot-epochs", "1,3"],
     r"--snapshot-epochs 3: the run has epochs 1..2 \(6 steps of 3 per epoch\)"),
    (["--online", "--suite", "easyvqa", "--limit", "4", "--steps", "5", "--snapshot-epochs", "2"],
     r"--snapshot-epochs 2: the run has epochs 1..1 \(5 steps"),
])
def test_training_flag_mistakes_are_named_before_the_target_loads(tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.setattr(training_module, "load_model", _no_model)
    with pytest.raises(InputError, match=message):
        _train(flags, tmp_path)
    capsys.readouterr()
    assert main(["train", "--method", "eagle2", "--model", "tiny-llava", "--out", str(tmp_path / "o"), *flags,
                 "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def _train(flags: list[str], tmp_path):
    """`train` with the config the CLI builds from `flags`."""
    from vispec_bench.cli import build_parser
    from vispec_bench.running.config_flags import build_config, given_values

    args = build_parser().parse_args(["train", "--method", "eagle2", "--model", "tiny-llava", "--out",
                                      str(tmp_path / "o"), "--device", "cpu", *flags])
    return train(build_config(TrainConfig, given_values(args, TrainConfig)), **QUIET)
