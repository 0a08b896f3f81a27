"""`train --feature-dir`: teacher features shared on disk across offline training runs, keyed so
they can never serve another row's, target's or capture setting's features."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vispec_bench.drafts.training as training_module
from vispec_bench.drafts.datagen import GenDataConfig, generate_data, load_training_rows
from vispec_bench.drafts.feature_cache import SIGNATURE
from vispec_bench.drafts.training import TrainConfig, train
from vispec_bench.errors import InputError

NUM_ROWS = 4  # 3 training rows + 1 held out


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory):
    """Two training sets on the same prompts: gen-data's answers (cap10) and the same rows with
    each answer cut to 6 tokens (cap6: the same sample ids and images, other answer ids)."""
    root = tmp_path_factory.mktemp("gen")
    generate_data(GenDataConfig(model="tiny-llava", limit=NUM_ROWS, max_new_tokens=10, dtype="float32",
                                device="cpu"), root / "cap10", progress=False)
    shorter = load_training_rows(root / "cap10").map(lambda row: {"answer_ids": row["answer_ids"][:6]})
    shorter.save_to_disk(str(root / "cap6" / "dataset"))
    return root


@pytest.fixture
def computed(monkeypatch):
    """Counts the target's teacher-feature computations."""
    calls = []
    real = training_module.teacher_features

    def counting(adapter, messages, images, answer_ids):
        calls.append(list(answer_ids))
        return real(adapter, messages, images, answer_ids)

    monkeypatch.setattr(training_module, "teacher_features", counting)
    return calls


def _train(data, out, method="eagle2", steps=6, log=lambda m: None, **settings) -> dict[str, torch.Tensor]:
    train(TrainConfig(method=method, model="tiny-llava", data=str(data), out=str(out), steps=steps, lr=3e-3,
                      warmup_steps=2, eval_every=3, save_every=steps, dtype="float32", device="cpu", **settings),
          progress=False, log=log)
    return load_file(str(out / "draft.safetensors"))


def _losses(out) -> list:
    return [entry.get("loss") for entry in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())]


def _folders(feature_dir) -> list:
    return sorted(p for p in feature_dir.iterdir() if p.is_dir())


def _assert_equal_bits(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_second_run_reads_every_row_from_the_feature_dir_and_trains_bit_identically(tmp_path, datasets_dir, computed):
    data = datasets_dir / "cap10"
    plain = _train(data, tmp_path / "plain", feature_cache_mb=0)
    assert len(computed) > NUM_ROWS  # no memory cache: rows recomputed at every use
    computed.clear()
    features = tmp_path / "features"
    first = _train(data, tmp_path / "first", feature_dir=str(features), feature_cache_mb=0)
    assert len(computed) == NUM_ROWS  # each row once: later uses read the file
    computed.clear()
    second = _train(data, tmp_path / "second", feature_dir=str(features))
    assert computed == []
    _assert_equal_bits(first, plain)
    _assert_equal_bits(second, plain)
    assert _losses(tmp_path / "second") == _losses(tmp_path / "plain")
    [folder] = _folders(features)
    assert len(list(folder.glob("*.safetensors"))) == NUM_ROWS and not list(folder.glob(".*"))  # no temporaries
    signature = json.loads((folder / SIGNATURE).read_text())
    assert signature["captured_layers"] is None and signature["dtype"] == "torch.float32"


def test_other_answers_targets_and_captured_layers_do_not_reuse_each_others_features(tmp_path, datasets_dir,
                                                                                     computed):
    features, messages = tmp_path / "features", []
    _train(datasets_dir / "cap10", tmp_path / "a", steps=3, feature_dir=str(features))
    assert len(computed) == NUM_ROWS
    computed.clear()
    _train(datasets_dir / "cap6", tmp_path / "b", steps=3, feature_dir=str(features), log=messages.append)
    assert len(computed) == NUM_ROWS  # same prompts, shorter answers: other rows, not files found wanting
    assert not [m for m in messages if "recomputing" in m], messages
    computed.clear()
    _train(datasets_dir / "cap10", tmp_path / "c", steps=3, feature_dir=str(features), seed=1)  # other target weights
    assert len(computed) == NUM_ROWS
    computed.clear()
    _train(datasets_dir / "cap10", tmp_path / "d", method="eagle3", steps=3, feature_dir=str(features),
           log=messages.append)
    assert len(computed) == NUM_ROWS  # EAGLE-3 captures decoder-layer inputs: features of its own
    assert not [m for m in messages if "recomputing" in m], messages
    computed.clear()
    copy = tmp_path / "copy-of-cap10"
    shutil.copytree(datasets_dir / "cap10", copy)
    _train(copy, tmp_path / "e", steps=3, feature_dir=str(features))
    assert computed == []  # the same rows elsewhere: the same features
    signatures = [json.loads((folder / SIGNATURE).read_text()) for folder in _folders(features)]
    assert len(signatures) == 3  # seed 0 (both datasets), seed 1, seed 0 capturing
    [captured] = [s for s in signatures if s["captured_layers"] is not None]
    [eagle3_folder] = [f for f in _folders(features) if json.loads((f / SIGNATURE).read_text()) == captured]
    for path in eagle3_folder.glob("*.safetensors"):
        assert "layer_features" in load_file(str(path))


def test_a_truncated_feature_file_is_named_recomputed_and_rewritten(tmp_path, datasets_dir, computed):
    data, features = datasets_dir / "cap10", tmp_path / "features"
    reference = _train(data, tmp_path / "first", feature_dir=str(features))
    [folder] = _folders(features)
    damaged = sorted(folder.glob("*.safetensors"))[0]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # as a crash mid-write would leave it
    computed.clear()
    messages = []
    train(TrainConfig(method="eagle2", model="tiny-llava", data=str(data), out=str(tmp_path / "again"), steps=6,
                      lr=3e-3, warmup_steps=2, eval_every=3, save_every=6, dtype="float32", device="cpu",
                      feature_dir=str(features)), progress=False, log=messages.append)
    assert len(computed) == 1
    assert any(str(damaged) in m and "recomputing" in m for m in messages), messages
    load_file(str(damaged))  # whole again
    _assert_equal_bits(load_file(str(tmp_path / "again" / "draft.safetensors")), reference)


def test_an_interrupted_write_leaves_no_row_file(tmp_path, datasets_dir, monkeypatch):
    """A run killed while writing a row (here: the disk fills half-way) must not leave a file a
    later run would read as that row's features."""
    import safetensors.torch

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    features = tmp_path / "features"
    with pytest.raises(OSError, match="No space left"):
        _train(datasets_dir / "cap10", tmp_path / "a", steps=1, feature_dir=str(features))
    [folder] = _folders(features)
    assert sorted(p.name for p in folder.iterdir()) == [SIGNATURE]


def test_an_edited_signature_is_refused_with_the_folder_to_remove(tmp_path, datasets_dir):
    features = tmp_path / "features"
    _train(datasets_dir / "cap10", tmp_path / "a", steps=1, feature_dir=str(features))
    [folder] = _folders(features)
    signature = json.loads((folder / SIGNATURE).read_text())
    (folder / SIGNATURE).write_text(json.dumps({**signature, "captured_layers": [0]}))
    with pytest.raises(InputError, match=f"differs in captured_layers.*remove {folder}"):
        _train(datasets_dir / "cap10", tmp_path / "b", steps=1, feature_dir=str(features))


def test_feature_dir_is_refused_with_online_training():
    config = TrainConfig(method="eagle2", model="tiny-llava", online=True, suite="easyvqa", out="o", feature_dir="f")
    with pytest.raises(InputError, match="--feature-dir f .*--online recomputes them"):
        config.check()
