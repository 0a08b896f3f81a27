"""Default drafts reach a method as data (LoadedModel.default_drafts), are resolved before the
config hash is taken, and every record and the manifest name the draft loaded (path + sha256)."""

import dataclasses
import json
import shutil

import pytest
import torch

from conftest import prepared, tiny_by_name
from vispec_bench.drafts.checkpoints import save_draft
from vispec_bench.drafts.provenance import file_sha256
from vispec_bench.models.loading import ModelLoadError, _build_registered, load_model, shipped_drafts
from vispec_bench.plugins.method import make_method
from vispec_bench.results.records import ConfigMismatchError, load_records
from vispec_bench.running.config import RunConfig
from vispec_bench.running.runner import Runner


def _fake_checkpoint(directory, method, content: bytes):
    directory.mkdir(parents=True)
    (directory / "draft.safetensors").write_bytes(content)
    (directory / "draft_config.json").write_text(json.dumps({"method": method}))
    return directory


def test_shipped_drafts_are_keyed_by_the_kind_their_own_config_names(tmp_path):
    _fake_checkpoint(tmp_path / "first", "vispec", b"a")
    _fake_checkpoint(tmp_path / "second", "eagle2", b"b")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "draft_config.json").write_text(json.dumps({"method": "medusa"}))  # no weights
    assert shipped_drafts(tmp_path) == {"vispec": str(tmp_path / "first"), "eagle2": str(tmp_path / "second")}
    _fake_checkpoint(tmp_path / "third", "vispec", b"c")
    with pytest.raises(ModelLoadError, match="two default vispec drafts"):
        shipped_drafts(tmp_path)


def test_model_builders_return_model_and_processor_with_or_without_default_drafts():
    assert tiny_by_name("tiny-llava")[0].default_drafts == {}  # a (model, processor) builder
    model, processor = object(), object()
    loaded = _build_registered("m", lambda **kwargs: (model, processor, {"eagle2": "/d"}), torch.float32, "cpu", 0, {})
    assert (loaded.model, loaded.processor, loaded.default_drafts) == (model, processor, {"eagle2": "/d"})
    with pytest.raises(ModelLoadError, match="returned 1 values; expected"):
        _build_registered("m", lambda **kwargs: (model,), torch.float32, "cpu", 0, {})


def test_config_hash_differs_when_the_default_draft_differs_not_when_it_moves(tmp_path):
    first = _fake_checkpoint(tmp_path / "a", "eagle2", b"one draft")
    other = _fake_checkpoint(tmp_path / "b", "eagle2", b"another draft")
    moved = shutil.copytree(first, tmp_path / "elsewhere" / "a")

    def resolved(path):
        method = make_method("eagle2", {})
        method.resolve({"eagle2": str(path), "medusa": str(other)})
        return method

    assert resolved(first).config_hash() != resolved(other).config_hash()
    assert resolved(first).config_hash() == resolved(moved).config_hash()  # same content, other machine
    assert resolved(first).resolved_draft == {"path": str(first.resolve()), "weights": "draft.safetensors",
                                              "sha256": file_sha256(first / "draft.safetensors"),
                                              "source": "model default"}
    # the ablations are of ViSpec's kind: they take the default vispec draft
    ablation = make_method("vispec-noglobal", {})
    ablation.resolve({"vispec": str(first)})
    assert ablation.resolved_draft["path"] == str(first.resolve())


def _random_eagle2_draft(directory, seed):
    loaded, adapter = tiny_by_name("tiny-llava")
    method = prepared("eagle2", adapter, draft="random", seed=seed)
    save_draft(directory, method.draft.state_dict(), method.checkpoint_config(adapter))
    return directory


def test_records_and_manifest_carry_the_default_draft_loaded(tmp_path):
    drafts = {seed: _random_eagle2_draft(tmp_path / f"draft{seed}", seed) for seed in (1, 2)}

    def loader_with(draft):
        return lambda *args, **kwargs: dataclasses.replace(load_model(*args, **kwargs),
                                                           default_drafts={"eagle2": str(draft)})

    config = RunConfig(model="tiny-llava", methods=["eagle2"], limit=1, max_new_tokens=8, dtype="float32",
                       device="cpu", warmup=False, profile_rounds=False)
    manifests = {}
    for seed, draft in drafts.items():
        run_dir = Runner(config, out_dir=tmp_path, run_id=f"r{seed}", progress=False, log=lambda m: None,
                         model_loader=loader_with(draft)).run()
        expected = {"path": str(draft.resolve()), "weights": "draft.safetensors",
                    "sha256": file_sha256(draft / "draft.safetensors"), "source": "model default"}
        records = {r["method"]: r for r in load_records(run_dir / "records.jsonl")}
        # once loaded, the draft's own target name (tiny models are unnamed: None)
        assert records["eagle2"]["draft"] == {**expected, "trained_for": None} and records["ar"]["draft"] is None
        assert records["eagle2"]["equivalence"]["exact_match"]
        manifests[seed] = json.loads((run_dir / "manifest.json").read_text())
        assert manifests[seed]["config"]["methods"][1]["draft"] == expected
        assert records["eagle2"]["method_config_hash"] == manifests[seed]["config"]["methods"][1]["config_hash"]
    hashes = [manifests[seed]["config"]["methods"][1]["config_hash"] for seed in drafts]
    assert hashes[0] != hashes[1]
    # Resumable with the same default draft; another default draft is another config.
    Runner(config, resume=tmp_path / "r1", progress=False, log=lambda m: None, model_loader=loader_with(drafts[1]))
    with pytest.raises(ConfigMismatchError, match="methods"):
        Runner(config, resume=tmp_path / "r1", progress=False, log=lambda m: None, model_loader=loader_with(drafts[2]))


def test_no_draft_on_a_model_without_defaults_is_a_clear_error():
    config = RunConfig(model="tiny-llava", methods=["eagle2"], limit=1, dtype="float32", device="cpu")
    with pytest.raises(ValueError, match="eagle2 needs a draft: --method-args eagle2.draft=CHECKPOINT_DIR"):
        Runner(config, progress=False, log=lambda m: None)
