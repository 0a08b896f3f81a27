"""The speculators layout (vllm-project/speculators), `eagle` variant (EAGLE-1 / HASS): directories
written by speculators' own save_pretrained (tests/golden/make_speculators_golden.py) load through
`eagle2.draft=DIR`, reproduce speculators' outputs, decode exactly as AR, and the variants or
targets this package cannot serve are refused with what was expected and found."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import decode_all, easyvqa_samples, edited_draft, prepared, tiny_by_name
from methods.eagle2 import additive_mask, causal_visible
from vispec_bench.drafts.checkpoints import DraftCheckpointError

FIXTURES = Path(__file__).parent / "golden" / "fixtures" / "published_speculators"
EAGLE_CASES = ["speculators_eagle_llava", "speculators_hass_qwen"]


def case(name: str) -> tuple[dict, dict]:
    directory = FIXTURES / name
    return json.loads((directory / "case.json").read_text()), load_file(str(directory / "reference_io.safetensors"))


@pytest.mark.parametrize("name", EAGLE_CASES)
def test_speculators_eagle_draft_reproduces_speculators_forward(name):
    """fusion_fc -> fc, transformer -> layers.0, fusion_bias -> fc's bias, transformer_layer_config ->
    the layer (Qwen2's q/k/v biases for HASS here): the draft's outputs equal EagleSpeculator's."""
    about, io = case(name)
    _, adapter = tiny_by_name(about["target"])
    built = prepared("eagle2", adapter, draft=FIXTURES / name)
    assert (built.draft.fc.bias is not None) == about["fusion_bias"]
    n = io["hidden"].shape[1]
    with torch.no_grad():
        out = built.draft(io["hidden"], io["input_embeds"], torch.arange(n)[None],
                          additive_mask(causal_visible(n, 0, adapter.device), adapter.dtype))
    assert (out - io["out"]).abs().max() <= 1e-5


@pytest.mark.slow  # ~10-20 s each on two cores; the same EagleDraft as the EAGLE layouts' quick decode tests
@pytest.mark.parametrize("name", EAGLE_CASES)
def test_speculators_eagle_draft_decodes_exactly_as_ar(name):
    about, _ = case(name)
    _, adapter = tiny_by_name(about["target"])
    samples = easyvqa_samples(limit=2)
    ar = [r.new_ids for r in decode_all(adapter, None, samples, max_new_tokens=24)]
    built = prepared("eagle2", adapter, draft=FIXTURES / name)
    assert [r.new_ids for r in decode_all(adapter, built, samples, max_new_tokens=24)] == ar


def test_speculators_variants_and_targets_this_package_cannot_serve_are_refused(tmp_path):
    _, adapter = tiny_by_name("tiny-llava")
    layernorms = edited_draft(tmp_path, FIXTURES / "speculators_eagle_llava", "layernorms", lambda c: c.update(layernorms=True))
    with pytest.raises(DraftCheckpointError, match="layernorms: true .*has none of these normalisations"):
        prepared("eagle2", adapter, draft=layernorms)
    other_kind = edited_draft(tmp_path, FIXTURES / "speculators_eagle_llava", "dflash", lambda c: c.update(speculators_model_type="dflash"))
    with pytest.raises(DraftCheckpointError, match="speculators 'dflash' draft; this package loads"):
        prepared("eagle2", adapter, draft=other_kind)
    wider = edited_draft(tmp_path, FIXTURES / "speculators_eagle_llava", "wider", lambda c: c["transformer_layer_config"].update(hidden_size=4096))
    with pytest.raises(DraftCheckpointError, match=r"hidden_size=4096 \(config.json\), but this target has hidden_size"):
        prepared("eagle2", adapter, draft=wider)
    vocab = edited_draft(tmp_path, FIXTURES / "speculators_eagle_llava", "vocab", lambda c: c["transformer_layer_config"].update(vocab_size=32000))
    with pytest.raises(DraftCheckpointError, match=f"vocab_size=32000 .*target has vocab_size={adapter.vocab_size}"):
        prepared("eagle2", adapter, draft=vocab)
    _, qwen = tiny_by_name("tiny-qwen25vl")  # the same shapes, another verifier
    with pytest.raises(DraftCheckpointError, match="trained for a LlavaForConditionalGeneration verifier "
                                                   r"\(vispec-bench/tiny-llava\), but this target is a Qwen2_5_VL"):
        prepared("eagle2", qwen, draft=FIXTURES / "speculators_eagle_llava")
