"""`testbed build` end to end at toy sizes, tree sizing, batched gen-data and the easy-VQA labels."""

import copy
import json

import pytest
import torch

from conftest import easyvqa_samples, tiny_by_name
from suites.easyvqa import EasyVQA, question_facts
from vispec_bench.drafts import tree_settings
from vispec_bench.engine.acceptance import SamplingConfig
from vispec_bench.cli import main
from vispec_bench.running.config import BuildConfig
from vispec_bench.drafts.datagen import generate_batch
from vispec_bench.engine.decode import decode


def test_question_facts_read_shape_and_colour_from_questions_and_negations():
    assert question_facts("is there not a red shape?", "no") == {"color": "red"}
    assert question_facts("is there not a red shape?", "yes") == {}
    assert question_facts("does the image contain a circle?", "yes") == {"shape": "circle"}
    assert question_facts("what color is the triangle?", "teal") == {"shape": "triangle", "color": "teal"}
    assert question_facts("what is the blue shape?", "rectangle") == {"shape": "rectangle", "color": "blue"}


def test_long_answers_are_scored_for_naming_the_true_shape_or_colour():
    suite = EasyVQA("long")
    sample = suite.sample(0)
    shape, color = sample.meta["shape"], sample.meta["color"]
    assert suite.extra_scores(sample, f"It is a {color} thing.") == {"names_shape_or_color": 1.0}
    assert suite.extra_scores(sample, f"I see a {shape}.") == {"names_shape_or_color": 1.0}
    wrong = next(c for c in ("red", "green") if c != color)
    assert suite.extra_scores(sample, f"Nothing but {wrong} here.") == {"names_shape_or_color": 0.0}
    assert EasyVQA("short").extra_scores(sample, shape) == {}


def test_tree_settings_per_device_and_auto_choice():
    assert tree_settings.resolve(0, 0, 0, "cpu")[0] == tree_settings.DEVICE_DEFAULTS["cpu"]
    assert tree_settings.resolve(0, 0, 0, "cuda:0")[0] == tree_settings.DEVICE_DEFAULTS["cuda"]
    assert tree_settings.resolve(4, 3, 12, "cpu")[1]["choice"] == "given"
    # Verification free (GPU-like): the largest tree wins; verification linear in size (CPU-like): a small one.
    flat = {n + 1: 0.010 for n in (0, *tree_settings.CANDIDATE_SIZES)}
    linear = {n + 1: 0.010 * (n + 1) for n in (0, *tree_settings.CANDIDATE_SIZES)}
    assert tree_settings.choose_total_token(flat, 0.001, 5)[0] == max(tree_settings.CANDIDATE_SIZES)
    assert tree_settings.choose_total_token(linear, 0.001, 5)[0] == min(tree_settings.CANDIDATE_SIZES)
    # Reference convention: the defaults are the trees used before it (cpu: 5 levels, 10 draft nodes;
    # cuda: 5 levels, 60 draft nodes), and the records say which convention they use.
    cpu, cuda = tree_settings.DEVICE_DEFAULTS["cpu"], tree_settings.DEVICE_DEFAULTS["cuda"]
    assert (cpu.levels, cpu.top_k, cpu.draft_nodes) == (5, 4, 10)
    assert (cuda.levels, cuda.top_k, cuda.draft_nodes) == (5, 8, 60)
    assert tree_settings.resolve(3, 8, 30, "cpu")[1]["convention"] == "reference"
    with pytest.raises(ValueError, match="counts the root"):
        tree_settings.resolve(3, 8, 1, "cpu")
    # Auto sizing picks a number of draft nodes; total_token counts the root on top of it.
    settings, how = tree_settings.resolve(0, 0, -1, "cpu", measure=lambda: (linear, 0.001))
    assert settings.total_token == min(tree_settings.CANDIDATE_SIZES) + 1


def test_auto_tree_size_is_measured_and_recorded(tmp_path):
    args = ["run", "--model", "tiny-llava", "--methods", "eagle2,medusa", "--method-args", "eagle2.draft=random",
            "eagle2.total_token=-1", "medusa.draft=random", "medusa.tree_nodes=-1", "--limit", "1",
            "--max-new-tokens", "12", "--dtype", "float32", "--device", "cpu", "--out", str(tmp_path), "--run-id", "a",
            "--no-progress"]
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "a" / "records.jsonl").read_text().splitlines()]
    by_method = {r["method"]: r for r in records}
    eagle = by_method["eagle2"]["tree_settings"]
    assert eagle["choice"] == "auto" and eagle["total_token"] - 1 in tree_settings.CANDIDATE_SIZES
    assert set(eagle["verify_costs_ms"]) >= {str(n + 1) for n in tree_settings.CANDIDATE_SIZES}
    assert by_method["medusa"]["tree_settings"]["choice"] == "auto"
    assert all(r["equivalence"]["exact_match"] for r in records)


def test_batched_gen_data_gives_the_engines_greedy_answers():
    _, adapter = tiny_by_name("tiny-llava")
    samples = easyvqa_samples(limit=3)
    batched = generate_batch(adapter, [s.messages for s in samples], [s.images for s in samples], 24)
    for sample, (ids, stop) in zip(samples, batched):
        result = decode(adapter, adapter.build_prompt(sample.messages, sample.images), None, 24, SamplingConfig())
        assert (ids, stop) == (result.new_ids, result.stop_reason)


def test_testbed_build_at_toy_size_installs_weights_that_run_losslessly(tmp_path, monkeypatch):
    import time

    from vispec_bench.models.testbed import build as testbed_build
    from vispec_bench.models.testbed.build import stages
    from vispec_bench.models.testbed.build.vision import load_resume_state
    from vispec_bench.models.testbed.model import testbed_loader
    from vispec_bench.running.config import RunConfig
    from vispec_bench.running.runner import Runner

    config = BuildConfig(device="cpu", work=str(tmp_path / "work"), pretrain_steps=2, pretrain_batch=8,
                         lora_words_steps=2, vision_steps=2, eval_every=2, eval_questions=4, vision_long_examples=3,
                         data_samples=5,
                         data_max_new_tokens=12,
                         draft_vocab=256, draft_steps=4, install=False)
    pretrain_tower = stages.pretrain_tower

    def slow_pretrain(*args, **kwargs):  # a stage 1 long enough that counting it twice shows
        time.sleep(3)
        return pretrain_tower(*args, **kwargs)

    monkeypatch.setattr(stages, "pretrain_tower", slow_pretrain)
    started = time.time()
    work = testbed_build.build(config, command="test")
    elapsed = time.time() - started
    # each stage's recorded seconds are its own: together they fit in the build's wall time
    assert sum(json.loads(path.read_text())["seconds"] for path in work.glob("*.done.json")) <= elapsed + 0.5
    for stage in ("pretrain", "vision", "data", "draft-medusa", "draft-eagle2", "draft-vispec-stage1", "draft-vispec",
                  "draft-vispec-noadaptor", "draft-vispec-noglobal", "draft-eaglevlm", "draft-specvlm-stage1",
                  "draft-specvlm", "draft-eagle3"):
        assert (work / f"{stage}.done.json").exists(), stage
    # equal compute: every shipped draft trained draft_steps in all, a first stage included
    for stage in ("medusa", "eagle2", "vispec", "vispec-noadaptor", "vispec-noglobal", "eaglevlm", "specvlm", "eagle3"):
        assert json.loads((work / f"draft-{stage}.done.json").read_text())["total_steps"] == 4, stage
    data = json.loads((work / "data.done.json").read_text())
    assert data["rows"] == 6 and data["text_only_rows"] == 1
    evaluations = [e for e in map(json.loads, (work / "build_log.jsonl").read_text().splitlines())
                   if e.get("stage") == "vision" and "eval_accuracy" in e]
    assert json.loads((work / "vision.done.json").read_text())["accuracy"] == max(e["eval_accuracy"] for e in evaluations)
    assert load_resume_state(work / "vision_state.pt", "cpu")["step"] == 2  # loads without unpickling objects
    # Re-running skips finished stages; changing a finished stage's settings is refused.
    log_lines = len((work / "build_log.jsonl").read_text().splitlines())
    testbed_build.build(config, command="test")
    assert len((work / "build_log.jsonl").read_text().splitlines()) == log_lines
    with pytest.raises(ValueError, match="pretrain_steps"):
        testbed_build.build(BuildConfig(**{**config.__dict__, "pretrain_steps": 3}), command="test")

    installed = testbed_build.install(config, work, "cpu", "test", target=tmp_path / "installed")
    provenance = json.loads((installed / "provenance.json").read_text())
    assert provenance["command"] == "test" and provenance["build_config"]["seed"] == 0
    assert any(entry.get("stage") == "vision" for entry in provenance["history"])
    # eight bf16 drafts (EAGLE-3's with a 256-row head here) + the vision side (~80 MB at full width)
    assert sum(provenance["bytes"].values()) < 90 * 2 ** 20
    assert not (installed / "drafts" / "vispec-stage1").exists()  # a first stage is not shipped
    # a build that continued installed weights keeps how they were made, even when it replaces them
    continued = BuildConfig(**{**config.__dict__, "vision_init": str(installed)})
    testbed_build.install(continued, work, "cpu", "continued", target=installed)
    provenance = json.loads((installed / "provenance.json").read_text())
    assert provenance["command"] == "continued" and provenance["vision_init_provenance"]["command"] == "test"
    run_config = RunConfig(model="testbed", limit=1, max_new_tokens=10, dtype="float32", device="cpu",
                           profile_rounds=False, methods=["medusa", "eagle2", "vispec", "vispec-noadaptor"])
    # the installed directory, not the package's weights; the default methods find its drafts by themselves
    run_dir = Runner(run_config, out_dir=tmp_path / "runs", run_id="t", progress=False, log=lambda m: None,
                     model_loader=testbed_loader(installed)).run()
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"ar", "medusa", "eagle2", "vispec", "vispec-noadaptor"}
    assert all(r["equivalence"]["exact_match"] for r in records)
    drafts = {r["method"]: r["draft"] for r in records if r["method"] != "ar"}
    assert drafts["vispec"]["path"] == str((installed / "drafts" / "vispec").resolve())
    # the ablation runs the draft trained with its component off, not ViSpec's
    assert drafts["vispec-noadaptor"]["path"] == str((installed / "drafts" / "vispec-noadaptor").resolve())
    # Second stages start from their first stage's draft and train half the steps.
    for second, first in (("vispec", "vispec-stage1"), ("vispec-noglobal", "vispec-stage1"),
                          ("specvlm", "specvlm-stage1")):
        training = json.loads((installed / "drafts" / second / "draft_config.json").read_text())["training"]
        assert (training["init"], training["steps"]) == (str(work / "drafts" / first), 2)
    assert {d["source"] for d in drafts.values()} == {"model default"}


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj")])
def test_lora_hooks_during_training_equal_the_merged_weights_at_load(targets):
    from vispec_bench.models.testbed.model import build_untrained_testbed, merge_lora
    from vispec_bench.models.testbed.build.vision import LanguageLoRA

    model, processor = build_untrained_testbed()
    ids = processor.tokenizer("a teal circle", return_tensors="pt")["input_ids"]
    lora = LanguageLoRA(model, rank=4, targets=targets)
    with torch.no_grad():
        for param in lora.B.values():
            param.normal_(std=0.02)  # B starts at zero; give it something to merge
        hooked = model.model.language_model(input_ids=ids).last_hidden_state
    factors = lora.export()
    lora.remove()
    assert merge_lora(model, factors) == len(targets) * len(model.model.language_model.layers)
    with torch.no_grad():
        merged = model.model.language_model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(merged, hooked, rtol=1e-4, atol=1e-4)


def test_pretraining_the_tower_with_zero_steps_only_evaluates_the_probes():
    from vispec_bench.models.testbed.build.pretrain import pretrain_tower

    loaded, _ = tiny_by_name("tiny-llava")
    model = copy.deepcopy(loaded.model)  # the cached tiny model stays untouched
    before = {k: v.clone() for k, v in model.model.vision_tower.state_dict().items()}
    logged = []
    result = pretrain_tower(model, loaded.processor, BuildConfig(pretrain_steps=0, seed=0), None, "cpu",
                            lambda **entry: logged.append(entry))
    assert set(result) == {"probe_shape_accuracy_per_patch", "probe_color_accuracy_per_patch"}
    assert logged == [{"stage": "pretrain", "steps": 0, "loss": None, **result}]
    after = model.model.vision_tower.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_best_evaluation_keeps_the_best_accuracy_and_its_weights():
    from vispec_bench.models.testbed.build.vision import BestEvaluation

    loaded, _ = tiny_by_name("tiny-llava")
    model = copy.deepcopy(loaded.model)
    projector = model.model.multi_modal_projector.linear_1.weight
    key = "model.multi_modal_projector.linear_1.weight"

    def at(value):  # the "trained" projector after some step
        with torch.no_grad():
            projector.fill_(value)
        return model

    best = BestEvaluation.of(0, 0.25, at(0.0), None)
    assert best.offer(100, 0.75, at(1.0), None)
    assert not best.offer(200, 0.5, at(2.0), None)  # worse: the step-100 weights stay the best
    assert best.record() == {"step": 100, "accuracy": 0.75} and float(best.weights[key][0, 0]) == 1.0
    best.restore(model, None)
    assert float(projector.detach()[0, 0]) == 1.0
    assert best.offer(300, 0.75, at(3.0), None) and best.step == 300  # a tie goes to the longer-trained weights


UNPICKLED = []  # what RunsCodeWhenUnpickled ran


def _record_unpickling():
    UNPICKLED.append("ran")
    return "ran"


class RunsCodeWhenUnpickled:
    """Unpickling this object calls a function: what a hostile state file could do with any code."""

    def __reduce__(self):
        return _record_unpickling, ()


def test_vision_resume_state_loads_without_unpickling_objects(tmp_path):
    from vispec_bench.models.testbed.build.vision import load_resume_state, save_resume_state

    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    layer(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {"weights": layer.state_dict(), "lora": None, "optimizer": optimizer.state_dict(), "step": 7,
             "eval": {"step": 5, "accuracy": 0.5}, "best_weights": {"w": torch.zeros(2)}, "best_lora": None}
    save_resume_state(tmp_path / "vision_state.pt", state)
    loaded = load_resume_state(tmp_path / "vision_state.pt", "cpu")
    assert loaded["step"] == 7 and loaded["eval"] == {"step": 5, "accuracy": 0.5}
    torch.testing.assert_close(loaded["optimizer"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    # A state file with a pickled object is refused with a clear error, and the object's code never runs.
    torch.save({**state, "extra": RunsCodeWhenUnpickled()}, tmp_path / "hostile.pt")
    with pytest.raises(ValueError, match="other pickled objects"):
        load_resume_state(tmp_path / "hostile.pt", "cpu")
    assert UNPICKLED == []


def test_install_refuses_a_build_without_its_drafts_unless_asked_for_a_partial_install(tmp_path):
    """A build too long for one sitting ends in a commit of its vision side (partial); a plain
    install of an unfinished build must not replace shipped drafts with nothing."""
    from safetensors.torch import save_file

    from vispec_bench.errors import InputError
    from vispec_bench.models.testbed.build.common import SHIPPED_DRAFTS, mark_stage_done
    from vispec_bench.models.testbed.build.install import install

    work = tmp_path / "work"
    (work / "weights").mkdir(parents=True)
    save_file({"projector": torch.zeros(2)}, str(work / "weights" / "vision.safetensors"))
    config = BuildConfig(device="cpu", work=str(work))
    target = tmp_path / "installed"
    with pytest.raises(InputError, match="stage 2"):
        install(config, work, "cpu", "test", target=target, partial=True)
    mark_stage_done(work, "vision", {"step": 0, "accuracy": 0.5})
    with pytest.raises(InputError, match="medusa"):
        install(config, work, "cpu", "test", target=target)
    assert not target.exists()
    installed = install(config, work, "cpu", "test", target=target, partial=True)
    provenance = json.loads((installed / "provenance.json").read_text())
    assert provenance["missing_drafts"] == list(SHIPPED_DRAFTS)
    assert (installed / "vision.safetensors").exists() and not (installed / "drafts").exists()


def test_a_resumed_draft_stage_counts_the_training_seconds_its_checkpoint_holds(tmp_path):
    from vispec_bench.drafts.resume_state import save_state
    from vispec_bench.models.testbed.build.drafts import seconds_before_resume

    assert seconds_before_resume(tmp_path / "trainer_state.pt") == 0.0  # a fresh stage
    save_state(tmp_path / "trainer_state.pt", {"step": 100, "train_seconds": 412.5})
    assert seconds_before_resume(tmp_path / "trainer_state.pt") == 412.5
    save_state(tmp_path / "old.pt", {"step": 100})  # a checkpoint from before the seconds were kept
    assert seconds_before_resume(tmp_path / "old.pt") == 0.0
