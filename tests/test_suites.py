"""Suites: prompts and scores identical to lmms-eval's task utils on fixture docs, offline errors,
fixed-seed selection, and every suite running end to end on a tiny model."""

import copy
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from suites.mmmu import MMMU
from suites.scienceqa import ScienceQA
from suites.seedbench import SEEDBench
from suites.vqa_normalize import CONTRACTIONS, normalize_answer
from suites.vqav2 import VQAv2
from vispec_bench.cli import main
from vispec_bench.plugins.suite import LONG_ANSWER_INSTRUCTION


def lmms_task(task: str):
    """lmms-eval's task utils module; the parity tests must not be skipped in CI."""
    try:
        return importlib.import_module(f"lmms_eval.tasks.{task}.utils")
    except ImportError as err:
        if os.environ.get("VISPEC_REQUIRE_LMMS"):
            raise
        pytest.skip(f"lmms-eval not installed ({err}); `pip install --no-deps lmms-eval==0.7.3`")


def lmms_default_kwargs(task_dir: str, yaml_name: str) -> dict:
    """The task's `lmms_eval_specific_kwargs.default`, read from lmms-eval's own YAML."""
    import yaml

    utils = lmms_task(task_dir)
    lines = (Path(utils.__file__).parent / yaml_name).read_text().splitlines()
    config = yaml.safe_load("\n".join(line for line in lines if "!function" not in line))
    return config["lmms_eval_specific_kwargs"]["default"]


def docs_of(suite) -> list[dict]:
    """Every candidate row of a (small, fixture) hub suite, images decoded."""
    return [suite.doc(i) for i in range(suite.num_candidates())]


def _same_images(ours, theirs):
    return [(i.size, i.tobytes()) for i in ours] == [(i.size, i.tobytes()) for i in theirs]


def test_seedbench_prompt_and_score_match_lmms_eval():
    theirs = lmms_task("seedbench")
    suite = SEEDBench(prompt_mode="short", fixtures=True)
    assert [d["data_type"] for d in docs_of(suite)] == ["image"] * 3  # the video row is filtered out
    for doc in docs_of(suite):
        assert suite.doc_to_text(doc) == theirs.seed_doc_to_text(doc)
        assert _same_images(suite.doc_to_visual(doc), theirs.seed_doc_to_visual(doc))
        for response in ["A", "B", " a. red", "C is right", "d", "", "The answer is A", "B."]:
            result = theirs.seed_process_result(doc, [response])["seed_all"]
            assert suite.score_doc(doc, response) == theirs.seed_aggregation_result([result]), response


def test_scienceqa_prompt_and_score_match_lmms_eval():
    theirs = lmms_task("scienceqa")
    kwargs = lmms_default_kwargs("scienceqa", "scienceqa_img.yaml")
    suite = ScienceQA(prompt_mode="short", fixtures=True)
    assert len(docs_of(suite)) == 3  # the row without an image is filtered out
    assert any(doc["hint"] for doc in docs_of(suite)) and any(not doc["hint"] for doc in docs_of(suite))
    for doc in docs_of(suite):
        assert suite.doc_to_text(doc) == theirs.sqa_doc_to_text(doc, kwargs)
        assert _same_images(suite.doc_to_visual(doc), theirs.sqa_doc_to_visual(doc))
        assert suite.references(doc) == [theirs.sqa_doc_to_target(doc)]
        for response in ["A", "B.", "b", "A. red", "The answer is A", "C", " c ", "B. square", ""]:
            assert suite.score_doc(doc, response) == theirs.sqa_process_results(doc, [response])["exact_match"]


VQA_RESPONSES = ["red", "Red.", "dark red", "one", "1", "two", "yes", "Yes!", "a white wall", "the white", "White!",
                 "isnt", "dont know", "3,000 apples.", "10 cats", "no", "white.", "1.5", "(white)", "pa-per", "blank"]


def test_vqav2_prompt_and_score_match_lmms_eval():
    theirs = lmms_task("vqav2")
    kwargs = lmms_default_kwargs("vqav2", "vqav2_val.yaml")
    suite = VQAv2(prompt_mode="short", fixtures=True)
    for doc in docs_of(suite):
        assert suite.doc_to_text(doc) == theirs.vqav2_doc_to_text(doc, kwargs)
        assert _same_images(suite.doc_to_visual(doc), theirs.vqav2_doc_to_visual(doc))
        for response in VQA_RESPONSES:
            expected = theirs.vqav2_process_results_val(copy.deepcopy(doc), [response])["exact_match"]
            assert suite.score_doc(doc, response) == expected, response


def test_vqa_normalisation_matches_the_reference_processor():
    lmms_task("vqav2")
    from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor

    processor = EvalAIAnswerProcessor()
    assert CONTRACTIONS == processor.CONTRACTIONS  # the generated table equals the reference's
    texts = VQA_RESPONSES + list(processor.CONTRACTIONS) + ["Two dogs, one cat.", "a.b. c.", "it's 3.5 m",
                                                            "I'm here", "dont", "ill", "wont go", "5,000", "x , y"]
    for text in texts:
        reference = processor.process_digit_article(processor.process_punctuation(text))
        assert normalize_answer(text) == reference, text


MMMU_RESPONSES = {
    "multiple-choice": ["(B)", "B", "The answer is C.", "I think option C. The first is larger.", "C D",
                        "A circle is in the painting because the shape is round and the answer is a circle",
                        "(A) or (B)? I pick (B)", "A.", "Option B is the answer, the right one is a plant cell"],
    "open": ["19.6", "The distance is 19.6 m", "it falls 19.60 metres", "about 20", "d = 1/2 g t^2 = 19.6",
             "Therefore the answer is 19.6.", "1,960 cm", "so it is 2e1"],
}


def test_mmmu_prompt_visuals_and_score_match_lmms_eval():
    theirs = lmms_task("mmmu")
    kwargs = lmms_default_kwargs("mmmu", "mmmu_val.yaml")
    # mmmu_doc_to_messages flips a module-global flag that rewrites later prompts; we never call it
    # and check the flag is in its default state, so the comparison is with the default prompt.
    assert theirs.config["metadata"]["interleaved_format"] is False
    suite = MMMU(prompt_mode="short", fixtures=True)
    assert {d["question_type"] for d in docs_of(suite)} == {"multiple-choice", "open"}
    assert max(len(suite.doc_to_visual(d)) for d in docs_of(suite)) == 3  # an option can reference an image
    for doc in docs_of(suite):
        assert suite.doc_to_text(doc) == theirs.mmmu_doc_to_text(doc, kwargs)
        assert _same_images(suite.doc_to_visual(doc), theirs.mmmu_doc_to_visual(doc))
        for response in MMMU_RESPONSES[doc["question_type"]]:
            result = theirs.mmmu_process_results(doc, [response])["mmmu_acc"]
            _, metrics = theirs.evaluate_mmmu([result])
            assert suite.score_doc(doc, response) == metrics["acc"], (doc["id"], response)


def test_mmmu_unparseable_answer_gets_a_deterministic_letter():
    """Where nothing can be parsed, the reference draws from Python's global RNG (a score that
    changes between runs); we draw from an RNG seeded by the question id."""
    suite = MMMU(prompt_mode="short", fixtures=True)
    doc = next(d for d in docs_of(suite) if d["question_type"] == "multiple-choice")
    scores = {suite.score_doc(doc, "no idea") for _ in range(20)}
    assert len(scores) == 1


def test_long_answer_mode_replaces_the_short_answer_instruction():
    for suite_class in (SEEDBench, ScienceQA, VQAv2, MMMU):
        short, long = suite_class(prompt_mode="short", fixtures=True), suite_class(prompt_mode="long", fixtures=True)
        doc = short.doc(0)
        assert long.doc_to_text(doc).endswith(LONG_ANSWER_INSTRUCTION)
        assert LONG_ANSWER_INSTRUCTION not in short.doc_to_text(doc)
        assert long.doc_to_text(doc).split("\n")[0] == short.doc_to_text(doc).split("\n")[0]  # same question


def test_selection_is_fixed_by_the_seed():
    suite = VQAv2(prompt_mode="short", fixtures=True)
    first = [s.sample_id for s in suite.select(2, seed=3)]
    assert first == [s.sample_id for s in suite.select(2, seed=3)]
    assert len(set(first)) == 2
    assert {s.sample_id for s in suite.select(None, seed=0)} == {str(d["question_id"]) for d in docs_of(suite)}


def test_selection_keeps_the_seeded_choice_and_decodes_only_the_chosen_images(monkeypatch):
    import datasets
    from PIL import Image

    decoded = set()  # the encoded payloads decoded (datasets decodes a list's first image twice)
    decode_example = datasets.features.Image.decode_example
    monkeypatch.setattr(datasets.features.Image, "decode_example",
                        lambda self, value, *a, **k: decoded.add(value["bytes"]) or decode_example(self, value, *a, **k))

    def image_cells(doc) -> int:
        values = [v for value in doc.values() for v in (value if isinstance(value, list) else [value])]
        return sum(isinstance(v, Image.Image) for v in values)

    # The ids the seeded choice gave when the whole split was decoded first: they must not move.
    expected = {(VQAv2, 2, 3): ["900011", "900012"], (VQAv2, 3, 0): ["900013", "900011", "900010"],
                (ScienceQA, 2, 0): ["test-1", "test-2"], (ScienceQA, 2, 3): ["test-0", "test-2"],
                (SEEDBench, 1, 0): ["102"], (SEEDBench, 2, 3): ["101", "103"],
                (MMMU, 3, 0): ["validation_Biology_4", "validation_Math_2", "validation_Art_1"]}
    for (suite_class, limit, seed), ids in expected.items():
        suite = suite_class(fixtures=True)
        assert not decoded, suite_class  # loading and filtering decode no image
        samples = suite.select(limit, seed)
        assert [s.sample_id for s in samples] == ids
        assert len(decoded) == sum(image_cells(s.meta["doc"]) for s in samples)  # the chosen rows', no others
        decoded.clear()


def test_one_prompt_default_long_everywhere():
    import dataclasses

    from suites.easyvqa import EasyVQA
    from vispec_bench.running.config import RunConfig

    defaults = {field.name: field.default for field in dataclasses.fields(RunConfig)}
    assert defaults["prompt_mode"] == "long"
    for suite_class in (SEEDBench, ScienceQA, VQAv2, MMMU):
        assert suite_class(fixtures=True).prompt_mode == "long"
    assert EasyVQA().prompt_mode == "long"


def test_split_is_honoured_or_refused_with_the_splits_there_are():
    from suites.easyvqa import EasyVQA
    from vispec_bench.plugins.suite import Suite, make_suite

    class OneSplit(Suite):
        name = "one-split"

    assert OneSplit().split == "test"
    with pytest.raises(ValueError, match="suite 'one-split' has no split 'train': it has test"):
        OneSplit(split="train")
    assert EasyVQA().split == "test"
    train = make_suite("easyvqa", "long", split="train")
    assert train.split == "train" and train.num_candidates() == 38575  # easy-VQA's train questions
    assert train.select(1, seed=0)[0].sample_id.startswith("train-")
    with pytest.raises(ValueError, match="has no split 'validation': it has test, train"):
        EasyVQA(split="validation")
    assert VQAv2(fixtures=True).split == "validation"
    with pytest.raises(ValueError, match="fixtures hold only the 'validation' split, not 'train'"):
        VQAv2(fixtures=True, split="train")


def test_missing_dataset_offline_gives_one_clear_error():
    code = "from suites.mmmu import MMMU\nMMMU()"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(Path("/tmp/vispec-empty-hf")))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode != 0
    assert "SuiteDataError" in out.stderr
    assert "huggingface-cli download --repo-type dataset lmms-lab-encoder/MMMU" in out.stderr
    assert "--fixtures" in out.stderr


@pytest.mark.parametrize("suite", ["mmmu", "seedbench", "scienceqa", "vqav2", "easyvqa"])
def test_every_suite_runs_with_accuracy_recorded(suite, tmp_path):
    args = ["run", "--model", "tiny-llava", "--methods", "ar", "--suite", suite, "--fixtures", "--limit", "2",
            "--max-new-tokens", "8", "--dtype", "float32", "--device", "cpu", "--out", str(tmp_path), "--run-id", "r",
            "--no-progress", "--prompt-mode", "short"]
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "r" / "records.jsonl").read_text().splitlines()]
    assert all(isinstance(r["score"], float) for r in records)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["methods"]["ar"]["accuracy"] is not None
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["config"]["fixtures"] is True and manifest["config"]["prompt_mode"] == "short"
    assert len(manifest["config"]["sample_ids_hash"]) == 16


@pytest.mark.parametrize("model", ["tiny-llava-next", "tiny-qwen25vl"])
def test_multi_image_mmmu_row_runs_with_speculation(model, tmp_path):
    args = ["run", "--model", model, "--methods", "eagle2,vispec", "--method-args", "eagle2.draft=random",
            "vispec.draft=random", "--suite", "mmmu", "--fixtures", "--limit", "4", "--max-new-tokens", "12",
            "--dtype", "float32", "--device", "cpu", "--out", str(tmp_path), "--run-id", "m", "--no-progress"]
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "m" / "records.jsonl").read_text().splitlines()]
    assert max(r["num_images"] for r in records) == 3
    assert all(r["equivalence"]["exact_match"] for r in records)
