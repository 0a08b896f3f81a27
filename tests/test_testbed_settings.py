"""The testbed's image-token settings (64 / 256 / 576 per image), drafts shipped for an ablation
under its own name, and stage 2 of the build starting from another build's weights."""

import json
from pathlib import Path

import pytest
import torch

from conftest import easyvqa_samples, tiny_by_name
from vispec_bench.engine.acceptance import SamplingConfig
from vispec_bench.engine.adapter import make_adapter
from vispec_bench.engine.decode import decode
from vispec_bench.models.loading import load_model, shipped_drafts
from vispec_bench.models.testbed import model as testbed_module


def test_576_setting_gives_llava15s_image_token_count_and_decodes():
    loaded = load_model("testbed-576-untrained", torch.float32, "cpu")
    adapter = make_adapter(loaded.model, loaded.processor)
    sample = easyvqa_samples(limit=1)[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    (start, end), = prompt.image_spans
    assert end - start == 576 == (96 // 4) ** 2
    assert loaded.model.config.vision_config.image_size == 96 and loaded.processor.patch_size == 4
    ar = decode(adapter, prompt, None, 6, SamplingConfig())
    hf = loaded.model.generate(**prompt.model_inputs, max_new_tokens=6, do_sample=False)
    assert ar.new_ids == hf[0, prompt.input_ids.shape[0]:].tolist()


@pytest.mark.slow
def test_weights_know_their_setting_and_refuse_another(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    from vispec_bench.models.testbed.build.vision import save_vision_weights

    model, _ = testbed_module.build_untrained_testbed(image_tokens=256)
    save_vision_weights(model, {}, tmp_path / "vision.safetensors")
    state = load_file(str(tmp_path / "vision.safetensors"))
    assert testbed_module.image_tokens_of(state, tmp_path) == 256
    built, processor, drafts = testbed_module.build_testbed(weights_dir=tmp_path)  # the setting is read off the weights
    assert built.config.vision_config.patch_size == 4 and drafts == {}
    monkeypatch.setattr(testbed_module, "shipped_weights_dir", lambda tokens=64: tmp_path)
    with pytest.raises(testbed_module.TestbedError, match="256-image-token tower, not the 576-token setting"):
        testbed_module.build_testbed(image_tokens=576)  # the package's 576 folder holding a 256-token tower
    monkeypatch.undo()
    with pytest.raises(testbed_module.TestbedError, match="no 100-image-token setting"):
        testbed_module.vision_config(100)
    # a tower of 8 px patches with 256 positions is none of the settings
    odd = dict(state)
    kernel = next(k for k in odd if k.endswith("embeddings.patch_embedding.weight"))
    odd[kernel] = torch.zeros(256, 3, 8, 8)
    save_file(odd, str(tmp_path / "odd.safetensors"))
    with pytest.raises(testbed_module.TestbedError, match="none of the testbed's settings"):
        testbed_module.image_tokens_of(odd, tmp_path / "odd.safetensors")


def test_shipped_weights_folders_per_setting():
    assert testbed_module.shipped_weights_dir(64) == testbed_module.WEIGHTS_DIR
    assert testbed_module.shipped_weights_dir(576).name == "weights-576"


def _fake_draft(root, folder, kind, options=None):
    directory = root / folder
    directory.mkdir(parents=True)
    (directory / "draft_config.json").write_text(json.dumps({"method": kind, "options": options or {}}))
    (directory / "draft.safetensors").write_bytes(b"")
    return str(directory)


def test_an_ablation_takes_the_draft_shipped_under_its_name_and_the_method_its_own(tmp_path):
    from vispec_bench.plugins.method import make_method

    own = _fake_draft(tmp_path, "vispec", "vispec")
    ablation = _fake_draft(tmp_path, "vispec-noadaptor", "vispec", {"adaptor": False})
    found = shipped_drafts(tmp_path)
    assert found == {"vispec": own, "vispec-noadaptor": ablation}
    chosen = {}
    for name in ("vispec", "vispec-noadaptor", "vispec-noglobal"):
        method = make_method(name, {})
        method.resolve(found)
        chosen[name] = method.resolved_draft["path"]
    # vispec-noglobal has no draft of its own here: it falls back to its kind's, as before
    assert chosen == {"vispec": own, "vispec-noadaptor": ablation, "vispec-noglobal": own}


def test_lora_factors_round_trip_and_a_wrong_rank_is_refused(tmp_path):
    import copy

    from vispec_bench.models.testbed.build.vision import LanguageLoRA

    loaded, _ = tiny_by_name("tiny-llava")
    model = copy.deepcopy(loaded.model)
    source = LanguageLoRA(model, rank=2)
    with torch.no_grad():
        for param in [*source.A.values(), *source.B.values()]:
            param.normal_()
    exported = source.export()
    source.remove()
    target = LanguageLoRA(model, rank=2)
    target.load_exported(exported, tmp_path)
    assert all(torch.equal(target.A[k], source.A[k]) and torch.equal(target.B[k], source.B[k]) for k in source.A)
    target.remove()
    wider = LanguageLoRA(model, rank=4)  # a higher rank continues the factors: same B·A, room to learn more
    wider.load_exported(exported, tmp_path)
    assert all(torch.allclose(wider.B[k] @ wider.A[k], source.B[k] @ source.A[k]) for k in source.A)
    assert all(torch.count_nonzero(wider.B[k][:, 2:]) == 0 for k in source.A)
    wider.remove()
    with pytest.raises(ValueError, match="rank 1 or lower.*--lora-rank"):
        LanguageLoRA(model, rank=1).load_exported(exported, tmp_path)


def test_lora_on_more_projections_starts_the_new_ones_fresh_and_refuses_unknown_names(tmp_path):
    import copy

    from vispec_bench.errors import InputError
    from vispec_bench.models.testbed.build.vision import LanguageLoRA

    loaded, _ = tiny_by_name("tiny-llava")
    model = copy.deepcopy(loaded.model)
    source = LanguageLoRA(model, rank=2)  # q/v, as the shipped weights
    with torch.no_grad():
        for param in source.B.values():
            param.normal_()
    exported = source.export()
    source.remove()
    wider = LanguageLoRA(model, rank=2, targets=("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"))
    before_mlp = {k: wider.A[k].clone() for k in wider.A if k.endswith(("gate_proj", "up_proj", "down_proj"))}
    wider.load_exported(exported, tmp_path)
    assert all(torch.equal(wider.B[k], source.B[k]) for k in source.B)  # q/v taken over
    assert before_mlp and all(torch.equal(wider.A[k], before_mlp[k]) and not wider.B[k].any() for k in before_mlp)
    wider.remove()
    with pytest.raises(InputError, match="no projection named qkv.*choose from q_proj"):
        LanguageLoRA(model, rank=2, targets=("qkv",))


def test_a_build_refuses_an_unknown_lora_target_before_its_first_stage(tmp_path):
    from vispec_bench.errors import InputError
    from vispec_bench.models.testbed.build.stages import build
    from vispec_bench.running.config import BuildConfig

    work = tmp_path / "work"
    with pytest.raises(InputError, match="no projection named qkv"):
        build(BuildConfig(work=str(work), lora_targets=["q_proj", "qkv"], install=False))
    assert not work.exists()  # nothing started, nothing written


def test_a_build_started_before_a_setting_existed_resumes_under_its_default(tmp_path):
    from dataclasses import asdict

    from vispec_bench.errors import InputError
    from vispec_bench.models.testbed.build.common import mark_stage_done
    from vispec_bench.models.testbed.build.stages import check_settings
    from vispec_bench.running.config import BuildConfig

    stored = asdict(BuildConfig(work=str(tmp_path)))
    del stored["lora_targets"]  # the build_config.json of a build started before --lora-targets
    (tmp_path / "build_config.json").write_text(json.dumps(stored))
    mark_stage_done(tmp_path, "vision", {"step": 200, "accuracy": 0.8})
    check_settings(BuildConfig(work=str(tmp_path)), tmp_path)  # the default then and now: no clash
    with pytest.raises(InputError, match="lora_targets"):
        check_settings(BuildConfig(work=str(tmp_path), lora_targets=["q_proj", "v_proj", "up_proj"]), tmp_path)


def test_a_build_from_before_the_words_projector_was_an_mlp_build(tmp_path):
    """build_config.json without `projector` / `lora_words_steps` was written when LLaVA's MLP and no
    told-in-words LoRA were all there was: it reads back as that, not as today's defaults (words, 300)."""
    from dataclasses import asdict

    from vispec_bench.errors import InputError
    from vispec_bench.models.testbed.build.common import mark_stage_done
    from vispec_bench.models.testbed.build.stages import check_settings
    from vispec_bench.running.config import BuildConfig

    assert (BuildConfig().projector, BuildConfig().lora_words_steps) == ("words", 300)
    stored = asdict(BuildConfig(work=str(tmp_path)))
    del stored["projector"], stored["lora_words_steps"]
    assert (BuildConfig.from_stored(stored).projector, BuildConfig.from_stored(stored).lora_words_steps) == ("mlp", 0)
    (tmp_path / "build_config.json").write_text(json.dumps(stored))
    mark_stage_done(tmp_path, "vision", {"step": 200, "accuracy": 0.8})
    check_settings(BuildConfig(work=str(tmp_path), projector="mlp", lora_words_steps=0), tmp_path)  # the same
    (tmp_path / "build_config.json").write_text(json.dumps(stored))
    with pytest.raises(InputError, match="lora_words_steps, projector"):
        check_settings(BuildConfig(work=str(tmp_path)), tmp_path)  # today's defaults would change stage 2


@pytest.mark.slow
def test_vision_init_takes_tower_and_projector_only_from_the_same_setting(tmp_path):
    from vispec_bench.models.testbed.build.vision import LanguageLoRA, save_vision_weights, start_from

    source, _ = testbed_module.build_untrained_testbed(seed=1)
    lora = LanguageLoRA(source, rank=2)
    with torch.no_grad():
        for param in lora.B.values():
            param.normal_()
    save_vision_weights(source, lora.export(), tmp_path / "vision.safetensors")
    lora.remove()
    projector = "model.multi_modal_projector.linear_1.weight"
    tower = next(k for k in source.state_dict() if k.endswith("encoder.layers.0.mlp.fc1.weight"))
    logged = []
    for tokens, same in ((64, True), (256, False)):
        model, _ = testbed_module.build_untrained_testbed(seed=2, image_tokens=tokens)
        before = {k: model.state_dict()[k].clone() for k in (projector, tower)}
        fresh = LanguageLoRA(model, rank=2)
        start_from(model, fresh, tmp_path, lambda **entry: logged.append(entry))
        for key in (projector, tower):
            expected = source.state_dict()[key].to(torch.bfloat16).float() if same else before[key]
            assert torch.equal(model.state_dict()[key], expected), (tokens, key)
        assert all(torch.count_nonzero(b) for b in fresh.B.values())  # the LoRA factors came in both cases
        fresh.remove()
    assert [(entry["tower"], entry["projector"]) for entry in logged] == [(True, True), (False, False)]
    # another kind of projector (the words one): the tower only; its LoRA read the MLP's tokens, so fresh
    model, _ = testbed_module.build_untrained_testbed(seed=2, projector="words")
    readout = {k: v.clone() for k, v in model.model.multi_modal_projector.state_dict().items()}
    fresh = LanguageLoRA(model, rank=2)
    loaded = start_from(model, fresh, tmp_path, lambda **entry: logged.append(entry))
    assert loaded == {"lora": False, "tower": True, "projector": False}
    assert torch.equal(model.state_dict()[tower], source.state_dict()[tower].to(torch.bfloat16).float())
    assert all(torch.equal(v, readout[k]) for k, v in model.model.multi_modal_projector.state_dict().items())
    assert not any(torch.count_nonzero(b) for b in fresh.B.values())
    assert (logged[-1]["tower"], logged[-1]["projector"], logged[-1]["lora"]) == (True, False, False)


def test_balanced_order_lets_each_question_group_take_turns_and_visits_every_question():
    from collections import Counter

    from vispec_bench.models.testbed.build.vision_examples import balanced_order, question_group

    questions = ["is there a circle?"] * 60 + ["is there a red shape?"] * 10 + ["what shape is it?"] * 30
    answers = ["no"] * 50 + ["yes"] * 10 + ["yes"] * 5 + ["no"] * 5 + ["circle"] * 30
    order = balanced_order(questions, answers, seed=0)
    assert len(order) == len(questions)
    groups = [question_group(questions[i], answers[i]) for i in order]
    assert groups[:5] == sorted({"open", "shape yes", "shape no", "colour yes", "colour no"})  # turns, in name order
    assert set(Counter(groups).values()) == {20}  # 5 groups, 100 draws: each group a fifth, whatever its size
    assert set(order[:50]) >= set(range(50, 60))  # the rare "shape yes" questions all come up early
    assert balanced_order(questions, answers, seed=0) == order != balanced_order(questions, answers, seed=1)


def test_shipped_576_setting_has_its_own_drafts_trained_at_576_and_lossless():
    """weights-576/ is a complete build of the 576 setting (no draft missing), and its EAGLE-2 and ViSpec
    drafts are trained for it: lossless on the real SmolLM2, several tokens a round (a random draft
    gives ~1), EAGLE-2's draft reading all 576 image tokens and ViSpec's adaptor compressing them."""
    from conftest import prepared

    folder = testbed_module.shipped_weights_dir(576)
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["build_config"]["image_tokens"] == 576 and provenance["missing_drafts"] == []
    loaded = load_model("testbed-576", torch.float32, "cpu")
    assert loaded.default_drafts == {kind: str(folder / "drafts" / kind) for kind in (
        "eagle2", "medusa", "vispec", "vispec-noadaptor", "vispec-noglobal", "eaglevlm", "specvlm", "eagle3")}
    for kind, path in loaded.default_drafts.items():  # trained against this setting, not copied from the 64 build
        config = json.loads((Path(path) / "draft_config.json").read_text())
        assert config["target"]["name_or_path"] == "vispec-bench/testbed-576", kind
    adapter = make_adapter(loaded.model, loaded.processor)
    sample = easyvqa_samples(limit=1)[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    ar = decode(adapter, prompt, None, 32, SamplingConfig())
    costs = {}
    for name in ("eagle2", "vispec"):
        method = prepared(name, adapter, draft=loaded.default_drafts[name])
        result = decode(adapter, prompt, method.make_proposer(adapter, None), 32, SamplingConfig())
        assert result.new_ids == ar.new_ids, name
        assert sum(result.accepted_lengths) / result.num_rounds > 2.0, name
        costs[name] = result.draft_cost["visual_tokens"]
    assert costs["eagle2"] == 576 and costs["vispec"] < 576
