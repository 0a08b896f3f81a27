"""Published EAGLE-3 drafts: the authors' layout (SafeAILab/EAGLE: config.json with draft_vocab_size,
fc / midlayer.* / norm / lm_head / d2t / t2d) and the speculators `eagle3` layout (vllm-project/
speculators), each written by the reference code itself (tests/golden/make_eagle3_golden.py,
make_speculators_golden.py), load through `eagle3.draft=DIR`, reproduce the reference's hidden
states (<= 1e-5, relative above 1) and top-k target ids (identical), decode exactly as AR, and what this package's
draft cannot be is refused by name."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import DynamicCache

from conftest import decode_all, easyvqa_samples, edited_draft, prepared, tiny_by_name
from methods.eagle2 import additive_mask, causal_visible
from methods.eagle3 import reference_layer_ids
from vispec_bench.drafts.checkpoints import DraftCheckpointError

GOLDEN = Path(__file__).parent / "golden" / "fixtures"
REFERENCE = GOLDEN / "published_eagle3"
SPECULATORS = GOLDEN / "published_speculators"
REFERENCE_CASES = ["reference_llava_reduced_bin", "reference_qwen_fullvocab_safetensors"]
SPECULATORS_CASES = ["speculators_eagle3_llava_reduced", "speculators_eagle3_qwen_fullvocab",
                     "speculators_eagle3_llava_norm_before_residual"]


def case(directory: Path) -> tuple[dict, dict]:
    return json.loads((directory / "case.json").read_text()), load_file(str(directory / "reference_io.safetensors"))


def close(found: torch.Tensor, expected: torch.Tensor) -> bool:
    """Within 1e-5, relative to the values' size where they exceed 1: float32 rounding of two attention
    implementations (the references' eager, SDPA here) on hidden states up to ~20 in size."""
    return float((found - expected).abs().max()) <= 1e-5 * max(1.0, float(expected.abs().max()))


def run(draft, features, token_embeds, positions, visible, cache):
    with torch.no_grad():
        return draft(features, token_embeds, positions[None], additive_mask(visible, torch.float32), cache)


@pytest.mark.parametrize("name", REFERENCE_CASES)
def test_eagle3_reference_checkpoint_reproduces_the_authors_draft(name):
    """The prompt pass (fc over 3H features) and the first tree step of topK_genrate (the draft's own
    outputs fed back, tokens mapped through d2t, all k nodes at position n seeing the prompt and
    themselves) equal SafeAILab's cnets.Model on the same weights and inputs."""
    about, io = case(REFERENCE / name)
    _, adapter = tiny_by_name(about["target"])
    built = prepared("eagle3", adapter, draft=REFERENCE / name)
    draft = built.draft
    assert draft.layer_ids == reference_layer_ids(adapter.text_config.num_hidden_layers)  # the layout names none
    assert draft.draft_vocab_size == about["draft_vocab_size"]
    assert torch.equal(adapter.embed_tokens(io["input_ids"]), io["input_embeds"])  # the reference's load_emb copy
    n, k = io["input_ids"].shape[1], about["top_k"]
    cache = DynamicCache()
    out = run(draft, io["features"], io["input_embeds"], torch.arange(n), causal_visible(n, 0, "cpu"), cache)
    assert close(out, io["out"])
    proposer = built.make_proposer(adapter, None)
    values, ids = proposer._top(out[0, -1], k)
    assert ids.tolist() == io["top_ids"].tolist()
    assert close(values, io["top_values"])
    visible = torch.cat([torch.ones(k, n, dtype=torch.bool), torch.eye(k, dtype=torch.bool)], dim=1)
    level2 = run(draft, out[:, -1:].expand(1, k, -1), adapter.embed_tokens(ids)[None], torch.full((k,), n), visible,
                 cache)
    assert close(level2, io["level2_out"])
    values, ids = proposer._top(level2[0], k)
    assert ids.tolist() == io["level2_top_ids"].tolist()
    assert close(values, io["level2_top_values"])


@pytest.mark.parametrize("name", SPECULATORS_CASES)
def test_speculators_eagle3_draft_reproduces_speculators_forward(name):
    """Eagle3DraftModel.forward with two training-time-test steps: step 1 is the prompt pass; step 2
    feeds each row its own step-1 output with the next token, at position i + 1, seeing step-1 rows
    <= i and itself (a tree level). Hidden states, draft logits and top-k target ids equal speculators'."""
    about, io = case(SPECULATORS / name)
    _, adapter = tiny_by_name(about["target"])
    built = prepared("eagle3", adapter, draft=SPECULATORS / name)
    draft = built.draft
    assert list(draft.layer_ids) == about["eagle_aux_hidden_state_layer_ids"]
    assert draft.draft_vocab_size == about["draft_vocab_size"]
    assert draft.midlayer.norm_before_residual == about["norm_before_residual"]
    n = io["input_ids"].shape[1]
    cache = DynamicCache()
    out = run(draft, io["features"], io["input_embeds"], torch.arange(n), causal_visible(n, 0, "cpu"), cache)
    visible = torch.cat([torch.ones(n, n, dtype=torch.bool).tril(), torch.eye(n, dtype=torch.bool)], dim=1)
    step1 = run(draft, out, io["input_embeds_step1"], torch.arange(n) + 1, visible, cache)
    proposer = built.make_proposer(adapter, None)
    for step, hidden in enumerate((out, step1)):
        assert close(hidden, io[f"out_step{step}"]), step
        with torch.no_grad():
            assert close(draft.logits(hidden), io[f"logits_step{step}"]), step
            values, ids = proposer._top(hidden[0], 8)
        assert ids.tolist() == io[f"top_ids_step{step}"].tolist(), step
        assert close(values, io[f"top_values_step{step}"]), step


# One layout decodes in the quick suite; the others (each ~10 s on two cores) behind `slow`.
DECODE_CASES = [pytest.param(REFERENCE / REFERENCE_CASES[0], id=REFERENCE_CASES[0])] + [
    pytest.param(directory, id=directory.name, marks=pytest.mark.slow)
    for directory in [REFERENCE / REFERENCE_CASES[1]] + [SPECULATORS / name for name in SPECULATORS_CASES]]


@pytest.mark.parametrize("directory", DECODE_CASES)
def test_published_eagle3_draft_decodes_exactly_as_ar(directory):
    about, _ = case(directory)
    _, adapter = tiny_by_name(about["target"])
    samples = easyvqa_samples(limit=2)
    ar = [r.new_ids for r in decode_all(adapter, None, samples, max_new_tokens=24)]
    built = prepared("eagle3", adapter, draft=directory)
    assert [r.new_ids for r in decode_all(adapter, built, samples, max_new_tokens=24)] == ar


def test_eagle3_layouts_this_package_cannot_serve_are_refused_by_name(tmp_path):
    _, adapter = tiny_by_name("tiny-llava")
    source = SPECULATORS / "speculators_eagle3_llava_reduced"
    for flag in ("norm_before_fc", "fc_norm", "norm_output"):
        with pytest.raises(DraftCheckpointError, match=f"speculators 'eagle3' draft with {flag} .*no such option"):
            prepared("eagle3", adapter, draft=edited_draft(tmp_path, source, flag, lambda c: c.update({flag: True})))
    deeper = edited_draft(tmp_path, source, "layers", lambda c: c["transformer_layer_config"].update(num_hidden_layers=2))
    with pytest.raises(DraftCheckpointError, match="2 decoder layers"):
        prepared("eagle3", adapter, draft=deeper)
    layers = edited_draft(tmp_path, source, "aux", lambda c: c.update(eagle_aux_hidden_state_layer_ids=[2, 16, 29]))
    with pytest.raises(DraftCheckpointError, match=r"decoder layers \[2, 16, 29\] .*this target has 2 layers"):
        prepared("eagle3", adapter, draft=layers)
    qwen3 = edited_draft(tmp_path, source, "qwen3", lambda c: c["transformer_layer_config"].update(model_type="qwen3"))
    with pytest.raises(DraftCheckpointError, match="decoder layer of type 'qwen3'"):
        prepared("eagle3", adapter, draft=qwen3)
    vocab = edited_draft(tmp_path, source, "vocab", lambda c: c["transformer_layer_config"].update(vocab_size=128256))
    with pytest.raises(DraftCheckpointError, match="vocab_size=128256 .*this target has vocab_size"):
        prepared("eagle3", adapter, draft=vocab)
    wide = edited_draft(tmp_path, REFERENCE / "reference_llava_reduced_bin", "wide",
                        lambda c: c.update(target_hidden_size=4096))
    with pytest.raises(DraftCheckpointError, match="target_hidden_size"):
        prepared("eagle3", adapter, draft=wide)
    _, qwen = tiny_by_name("tiny-qwen25vl")
    with pytest.raises(DraftCheckpointError, match="LlavaForConditionalGeneration verifier"):
        prepared("eagle3", qwen, draft=source)
    # An EAGLE-3 draft is not an EAGLE-2 one, in either layout.
    for directory in (source, REFERENCE / "reference_llava_reduced_bin"):
        with pytest.raises(DraftCheckpointError, match="is a 'eagle3' draft, not a 'eagle2' draft"):
            prepared("eagle2", adapter, draft=directory)


@pytest.mark.slow  # a CLI run of three methods on the tiny target (~30 s on two cores)
def test_published_eagle3_and_speculators_layouts_load_through_the_cli(tmp_path):
    from vispec_bench.cli import main

    args = ["run", "--model", "tiny-llava", "--methods", "eagle2,eagle3", "--method-args",
            f"eagle3.draft={SPECULATORS / 'speculators_eagle3_llava_reduced'}",
            f"eagle2.draft={SPECULATORS / 'speculators_eagle_llava'}", "--limit", "2", "--max-new-tokens", "16",
            "--dtype", "float32", "--device", "cpu", "--out", str(tmp_path / "runs"), "--run-id", "pub",
            "--no-progress"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "runs" / "pub" / "summary.json").read_text())
    for method in ("eagle2", "eagle3"):
        assert summary["methods"][method]["exact_match_rate"] == 1.0, method
