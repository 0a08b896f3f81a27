"""The testbed VLM on the real SmolLM2-135M weights (`testbed-untrained`: the seeded random vision tower)."""

import functools

import pytest
import torch

from conftest import easyvqa_samples
from methods.oracle import OracleProposer
from vispec_bench.engine.acceptance import SamplingConfig
from vispec_bench.engine.adapter import make_adapter
from vispec_bench.engine.decode import decode
from vispec_bench.models.loading import load_model
from vispec_bench.models.testbed import model as testbed_module
from vispec_bench.models.testbed.model import IMAGE_TOKEN, IMAGE_TOKEN_ID


@functools.lru_cache(maxsize=None)
def loaded_testbed():
    loaded = load_model("testbed-untrained", torch.float32, "cpu")
    return loaded, make_adapter(loaded.model, loaded.processor)


def test_image_token_reuses_a_spare_special_token_without_resizing():
    loaded, adapter = loaded_testbed()
    tokenizer = adapter.tokenizer
    assert len(tokenizer) == adapter.vocab_size == adapter.embed_tokens.weight.shape[0] == 49152
    assert tokenizer(IMAGE_TOKEN, add_special_tokens=False)["input_ids"] == [IMAGE_TOKEN_ID]
    assert adapter.image_token_id == IMAGE_TOKEN_ID == loaded.model.config.image_token_id
    sample = easyvqa_samples()[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    (start, end), = prompt.image_spans
    assert end - start == (64 // 8) ** 2  # 64x64 image, patch 8
    # Ordinary text never produces the image token.
    assert IMAGE_TOKEN_ID not in tokenizer("what is the red shape? <empty output>")["input_ids"]


def test_ar_equals_hf_generate_and_speculation_is_lossless_on_the_real_language_model():
    loaded, adapter = loaded_testbed()
    sample = easyvqa_samples()[1]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    ar = decode(adapter, prompt, None, 16, SamplingConfig())
    hf = loaded.model.generate(**prompt.model_inputs, max_new_tokens=16, do_sample=False)
    assert ar.new_ids == hf[0, prompt.input_ids.shape[0]:].tolist()
    oracle = decode(adapter, prompt, OracleProposer(ar.new_ids, 4, False, adapter.vocab_size), 16, SamplingConfig())
    assert oracle.new_ids == ar.new_ids and max(oracle.accepted_lengths) == 5


def test_testbed_without_built_weights_says_how_to_get_them(tmp_path):
    with pytest.raises(testbed_module.TestbedError, match="vision.safetensors is missing.*testbed build"):
        testbed_module.build_testbed(weights_dir=tmp_path)  # a weights directory without the weights
    with pytest.raises(testbed_module.TestbedError, match="testbed build"):
        load_model("testbed", torch.float32, "cpu", builder_options={"weights_dir": tmp_path})


@functools.lru_cache(maxsize=None)
def trained_testbed():
    loaded = load_model("testbed", torch.float32, "cpu")
    return loaded, make_adapter(loaded.model, loaded.processor)


def test_shipped_testbed_carries_its_drafts_as_data_keyed_by_their_own_kind():
    loaded, _ = trained_testbed()
    drafts = testbed_module.WEIGHTS_DIR / "drafts"
    # the ablations' drafts (trained with their component off) are keyed by their folder names
    assert loaded.default_drafts == {kind: str(drafts / kind) for kind in (
        "eagle2", "medusa", "vispec", "vispec-noadaptor", "vispec-noglobal", "eaglevlm", "specvlm", "eagle3")}
    assert not hasattr(loaded.model, "vispec_default_drafts")  # nothing stashed on the HF module


def test_shipped_eagle3_draft_is_trained_and_lossless():
    """The shipped EAGLE-3 draft (training-time test on the build's data) reads the testbed's layers
    2, 15 and 27 and accepts several tokens a round; a random draft of the same shape gives ~1."""
    from conftest import prepared

    loaded, adapter = trained_testbed()
    sample = easyvqa_samples(limit=1)[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    ar = decode(adapter, prompt, None, 32, SamplingConfig())
    method = prepared("eagle3", adapter, draft=loaded.default_drafts["eagle3"])
    result = decode(adapter, prompt, method.make_proposer(adapter, None), 32, SamplingConfig())
    assert result.new_ids == ar.new_ids
    assert sum(result.accepted_lengths) / result.num_rounds > 2.0


def test_shipped_eaglevlm_and_specvlm_drafts_are_trained_lossless_and_specvlm_compresses():
    from conftest import prepared

    loaded, adapter = trained_testbed()
    sample = easyvqa_samples(limit=1)[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    ar = decode(adapter, prompt, None, 32, SamplingConfig())
    image_tokens = sum(end - start for start, end in prompt.image_spans)
    costs = {}
    for name in ("eaglevlm", "specvlm"):
        method = prepared(name, adapter, draft=loaded.default_drafts[name])
        result = decode(adapter, prompt, method.make_proposer(adapter, None), 32, SamplingConfig())
        assert result.new_ids == ar.new_ids, name
        assert sum(result.accepted_lengths) / result.num_rounds > 2.5, name  # trained: a random draft gives ~1
        costs[name] = result.draft_cost
    assert costs["eaglevlm"]["visual_tokens"] == image_tokens
    assert costs["specvlm"]["visual_tokens"] < image_tokens and costs["specvlm"]["compression"]
    assert costs["specvlm"]["kv_tokens"] < costs["eaglevlm"]["kv_tokens"]
