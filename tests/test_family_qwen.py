"""Qwen2-VL and Qwen3-VL targets: AR equals HF generate, the image-token check, multi-image
prompts, every lossless method exact against AR, the draft layer's family, and real-checkpoint
loading that fails clearly.

Both families position text after an image with 3-D M-RoPE shifted by a rope delta (the tiny
models' 16-token images advance the position by 4: delta -12), so AR equal to HF generate pins
the adapter's offset. Qwen3-VL also adds deepstack visual features inside prefill.
"""

import functools
import json

import pytest
import torch

from conftest import GREEDY, easyvqa_samples, prepared, tiny_by_name, two_image_messages
from vispec_bench.engine.adapter import ImageTokenError, MRopeAdapter, make_adapter
from vispec_bench.engine.decode import decode
from vispec_bench.models.loading import SUPPORTED_MODEL_TYPES, ModelLoadError, load_model
from vispec_bench.plugins.method import SampleContext

QWEN_MODELS = ["tiny-qwen2vl", "tiny-qwen3vl"]
LOSSLESS_METHODS = ["oracle", "ngram", "eagle2", "eaglevlm", "vispec", "specvlm", "medusa", "medusa-dynamic", "eagle3"]
TEXT_ONLY = [{"role": "user", "content": [{"type": "text", "text": "what shape is red?"}]}]


def _hf_generate(loaded, prompt, max_new_tokens):
    out = loaded.model.generate(**prompt.model_inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, prompt.input_ids.shape[0]:].tolist()


def _prompts(adapter):
    """Two one-image prompts and a two-image prompt (text between the images)."""
    samples = easyvqa_samples()
    prompts = [adapter.build_prompt(s.messages, s.images) for s in samples[:2]]
    prompts.append(adapter.build_prompt(two_image_messages(), [s.images[0] for s in samples[:2]]))
    return prompts


@functools.lru_cache(maxsize=None)
def _ar_results(model, max_new_tokens=30):
    _, adapter = tiny_by_name(model)
    return [decode(adapter, prompt, None, max_new_tokens, GREEDY) for prompt in _prompts(adapter)]


@pytest.mark.parametrize("model", QWEN_MODELS)
def test_ar_matches_hf_generate_and_eagle2_is_lossless_on_qwen_vl(model):
    loaded, adapter = tiny_by_name(model)
    assert isinstance(adapter, MRopeAdapter)
    eagle2 = prepared("eagle2", adapter, draft="random")
    for sample in easyvqa_samples()[:2]:  # with the offset off by one, both diverge from generate (at token 1 to 24)
        prompt = adapter.build_prompt(sample.messages, sample.images)
        ar = decode(adapter, prompt, None, 40, GREEDY)
        assert ar.new_ids == _hf_generate(loaded, prompt, 40)
        assert ar.accepted_lengths == [1] * (len(ar.new_ids) - 1)
        # The offset is HF's own rope delta, and not zero here: the test pins the image's shift.
        assert adapter.prefill(prompt).position_offset == int(loaded.model.model.rope_deltas) == -12
        result = decode(adapter, prompt, eagle2.make_proposer(adapter, None), 40, GREEDY)
        assert result.new_ids == ar.new_ids


@pytest.mark.slow
@pytest.mark.parametrize("model", QWEN_MODELS)
def test_ar_matches_hf_generate_with_two_images_and_text_only(model):
    loaded, adapter = tiny_by_name(model)
    two_images = _prompts(adapter)[2]
    assert len(two_images.image_spans) == 2
    assert decode(adapter, two_images, None, 24, GREEDY).new_ids == _hf_generate(loaded, two_images, 24)
    assert adapter.prefill(two_images).position_offset == int(loaded.model.model.rope_deltas) == -24
    text_only = adapter.build_prompt(TEXT_ONLY, [])
    assert adapter.prefill(text_only).position_offset == 0
    assert decode(adapter, text_only, None, 24, GREEDY).new_ids == _hf_generate(loaded, text_only, 24)


@pytest.mark.slow
@pytest.mark.parametrize("model", QWEN_MODELS)
def test_image_token_id_mismatch_raises(model):
    loaded, adapter = tiny_by_name(model)
    prompt = _prompts(adapter)[0]
    wrong = prompt.input_ids.masked_fill(prompt.input_ids == adapter.image_token_id, adapter.image_token_id + 1)
    with pytest.raises(ImageTokenError, match="none of its .* tokens is the image token id"):
        adapter.check_image_tokens(wrong, 1)
    config = loaded.model.config
    original = config.image_token_id
    try:
        config.image_token_id = 151655  # the real checkpoints' id, wrong for this tokenizer
        with pytest.raises(ImageTokenError, match="expects image_token_id 151655"):
            make_adapter(loaded.model, loaded.processor)
    finally:
        config.image_token_id = original


@pytest.mark.slow
@pytest.mark.parametrize("method", LOSSLESS_METHODS)
@pytest.mark.parametrize("model", QWEN_MODELS)
def test_lossless_method_reproduces_ar_with_one_and_two_images(model, method):
    _, adapter = tiny_by_name(model)
    built = prepared(method, adapter) if method in ("oracle", "ngram") else prepared(method, adapter, draft="random")
    for index, (prompt, ar) in enumerate(zip(_prompts(adapter), _ar_results(model))):
        result = decode(adapter, prompt, built.make_proposer(adapter, SampleContext("s", ar.new_ids)), 30, GREEDY)
        assert result.new_ids == ar.new_ids, (method, index)
        assert sum(result.accepted_lengths) + 1 == len(result.new_ids)
        if method == "oracle" and ar.stop_reason == "max_new_tokens":
            assert max(result.accepted_lengths) == 5  # it proposed and was accepted: the tree path ran


@pytest.mark.slow
@pytest.mark.parametrize("model", QWEN_MODELS)
def test_static_engine_equals_eager_and_hf_generate(model):
    from test_engines import _check_engine_equals_eager

    _check_engine_equals_eager(model, "static", "aot_eager")


@pytest.mark.slow
def test_qwen3vl_deepstack_features_enter_prefill_only_and_image_embeds_are_the_merger_output():
    loaded, adapter = tiny_by_name("tiny-qwen3vl")
    prompt = _prompts(adapter)[0]
    inputs = prompt.model_inputs
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs.get("deepstack_visual_embeds"))

    handle = adapter.decoder.register_forward_pre_hook(record, with_kwargs=True)
    try:
        prefill = adapter.prefill(prompt)
        adapter.forward(torch.tensor([int(prefill.logits.argmax())]))
    finally:
        handle.remove()
    assert len(seen[0]) == 2 and seen[1] is None  # two deepstack layers in prefill, none for a decode token
    # The captured image embeddings are what the decoder's input holds at image positions: the merger's output.
    merged = loaded.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
    assert torch.equal(prefill.image_embeds, torch.cat(merged))

    # The tiny model's deepstack features matter (so AR == generate covers them): without them
    # the prefill logits change.
    def drop_deepstack(module, args, kwargs):
        return args, {**kwargs, "deepstack_visual_embeds": None}

    handle = adapter.decoder.register_forward_pre_hook(drop_deepstack, with_kwargs=True)
    try:
        without = adapter.prefill(prompt).logits
    finally:
        handle.remove()
    assert (without - prefill.logits).abs().max() > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("model, layer, biases", [("tiny-qwen2vl", "Qwen2DecoderLayer", True),
                                                  ("tiny-qwen3vl", "Qwen3DecoderLayer", False)])
def test_eagle_draft_layer_is_the_text_family_with_1d_rope(model, layer, biases):
    _, adapter = tiny_by_name(model)
    draft = prepared("eagle2", adapter, draft="random").draft
    decoder_layer = draft.layers[0]
    assert type(decoder_layer).__name__ == layer
    assert (decoder_layer.self_attn.q_proj.bias is not None) is biases
    assert hasattr(decoder_layer.self_attn, "q_norm") is (layer == "Qwen3DecoderLayer")
    target_rope = adapter.text_config.rope_parameters
    assert draft.config.rope_parameters == {"rope_type": "default", "rope_theta": target_rope["rope_theta"]}


def _save_as_a_hub_checkpoint(model, directory):
    """The tiny model saved as a hub checkpoint is laid out: HF's processor class named, and a
    video processor config (which makes AutoProcessor build a video processor)."""
    loaded, _ = tiny_by_name(model)
    loaded.model.save_pretrained(directory)
    loaded.processor.save_pretrained(directory)
    base = type(loaded.processor).__mro__[1].__name__  # Qwen2VLProcessor, Qwen3VLProcessor
    config = json.loads((directory / "processor_config.json").read_text())
    (directory / "processor_config.json").write_text(json.dumps({**config, "processor_class": base}))
    video = {"video_processor_type": base.replace("Processor", "VideoProcessor"), "patch_size": 8, "merge_size": 2,
             "temporal_patch_size": 2}
    (directory / "video_preprocessor_config.json").write_text(json.dumps(video))
    return loaded


@pytest.mark.slow
@pytest.mark.parametrize("model", QWEN_MODELS)
def test_a_checkpoint_directory_loads_or_says_to_install_torchvision(model, tmp_path):
    loaded = _save_as_a_hub_checkpoint(model, tmp_path)
    assert SUPPORTED_MODEL_TYPES[loaded.model.config.model_type] == type(loaded.model).__name__
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ModelLoadError, match="(?i)needs a package this environment lacks .*install torchvision"):
            load_model(str(tmp_path), torch.float32, "cpu")
    else:
        again = load_model(str(tmp_path), torch.float32, "cpu")
        assert type(again.model) is type(loaded.model) and again.processor.image_processor is not None


@pytest.mark.slow
def test_a_vlm_checkpoint_whose_processor_class_is_unknown_is_refused(tmp_path):
    loaded, _ = tiny_by_name("tiny-qwen3vl")
    loaded.model.save_pretrained(tmp_path)
    loaded.processor.save_pretrained(tmp_path)  # names ImageOnlyQwen3VLProcessor: AutoProcessor falls back to a tokenizer
    with pytest.raises(ModelLoadError, match="without an image processor"):
        load_model(str(tmp_path), torch.float32, "cpu")
