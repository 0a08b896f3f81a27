"""`testbed build` end to end at toy sizes, tree sizing, batched gen-data and the easy-VQA labels."""

import json

import pytest
import torch

from conftest import _WORK, easyvqa_samples, tiny_by_name
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
    from vispec_bench.models.testbed import build as testbed_build
    from vispec_bench.models.testbed.model import WEIGHTS_ENV

    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "unused"))  # build() points it at its own work directory
    config = BuildConfig(device="cpu", work=str(tmp_path / "work"), pretrain_steps=2, pretrain_batch=8,
                         vision_steps=2, eval_every=2, eval_questions=4, vision_long_examples=3, data_samples=5,
                         data_max_new_tokens=12,
                         draft_vocab=256, draft_steps=4, install=False)
    work = testbed_build.build(config, command="test")
    for stage in ("pretrain", "vision", "data", "draft-medusa", "draft-eagle2", "draft-vispec"):
        assert (work / f"{stage}.done.json").exists(), stage
    data = json.loads((work / "data.done.json").read_text())
    assert data["rows"] == 6 and data["text_only_rows"] == 1
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
    assert sum(provenance["bytes"].values()) < 40 * 2 ** 20
    monkeypatch.setenv(WEIGHTS_ENV, str(installed))
    args = ["run", "--model", "testbed", "--limit", "1", "--max-new-tokens", "10", "--dtype", "float32",
            "--device", "cpu", "--out", str(tmp_path / "runs"), "--run-id", "t", "--no-progress", "--no-profile"]
    assert main(args) == 0  # the default methods find the installed drafts by themselves
    records = [json.loads(line) for line in (tmp_path / "runs" / "t" / "records.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"ar", "medusa", "eagle2", "vispec"}
    assert all(r["equivalence"]["exact_match"] for r in records)


def test_lora_hooks_during_training_equal_the_merged_weights_at_load():
    from vispec_bench.models.testbed.model import build_untrained_testbed, merge_lora
    from vispec_bench.models.testbed.build import LanguageLoRA

    model, processor = build_untrained_testbed()
    ids = processor.tokenizer("a teal circle", return_tensors="pt")["input_ids"]
    lora = LanguageLoRA(model, rank=4)
    with torch.no_grad():
        for param in lora.B.values():
            param.normal_(std=0.02)  # B starts at zero; give it something to merge
        hooked = model.model.language_model(input_ids=ids).last_hidden_state
    factors = lora.export()
    lora.remove()
    assert merge_lora(model, factors) == 2 * len(model.model.language_model.layers)
    with torch.no_grad():
        merged = model.model.language_model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(merged, hooked, rtol=1e-4, atol=1e-4)
