"""Adapters and model loading fail loudly on bad input."""

import pytest
import torch

from conftest import easyvqa_samples, tiny_by_name
from vispec_bench.engine.adapter import ImageTokenError, TargetAdapter, make_adapter
from vispec_bench.models.loading import ModelLoadError, load_model


def test_image_placeholders_with_an_unexpected_id_fail_loudly(tiny):
    _, adapter = tiny
    sample = easyvqa_samples()[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    assert len(adapter.check_image_tokens(prompt.input_ids, 1)) == 1
    # What a processor/model id mismatch produces: placeholders under another id.
    wrong = prompt.input_ids.masked_fill(prompt.input_ids == adapter.image_token_id, adapter.image_token_id + 1)
    with pytest.raises(ImageTokenError, match="none of its .* tokens is the image token id"):
        adapter.check_image_tokens(wrong, 1)
    with pytest.raises(ImageTokenError, match="expected 2 runs of image tokens, found 1"):
        adapter.check_image_tokens(prompt.input_ids, 2)


def test_text_only_prompt_on_a_vlm_has_no_image_spans():
    _, adapter = tiny_by_name("tiny-llava")
    text_only = [{"role": "user", "content": [{"type": "text", "text": "what shape?"}]}]
    prompt = adapter.build_prompt(text_only, [])
    assert prompt.num_images == 0 and prompt.image_spans == []


def test_wrong_image_token_id_in_config_is_detected():
    loaded, _ = tiny_by_name("tiny-llava")
    model = loaded.model
    original = model.config.image_token_id
    try:
        model.config.image_token_id = 32000  # LLaVA-1.5's id, wrong for this tokenizer
        with pytest.raises(ImageTokenError, match="expects image_token_id 32000"):
            make_adapter(model, loaded.processor)
    finally:
        model.config.image_token_id = original


def test_unknown_model_name_suggests_the_close_one():
    with pytest.raises(ModelLoadError, match="Did you mean 'tiny-llava'"):
        load_model("tiny-lava", torch.float32, "cpu")


def test_missing_local_checkpoint_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "no-such-model" / "dir"), torch.float32, "cpu")


def test_local_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path), torch.float32, "cpu")


def test_saved_tiny_checkpoint_loads_from_a_local_directory(tmp_path):
    loaded, adapter = tiny_by_name("tiny-llava")
    loaded.model.save_pretrained(tmp_path)
    loaded.processor.save_pretrained(tmp_path)
    again = load_model(str(tmp_path), torch.float32, "cpu")
    assert again.source == "local"
    reloaded = make_adapter(again.model, again.processor)
    sample = easyvqa_samples()[0]
    a = adapter.prefill(adapter.build_prompt(sample.messages, sample.images)).logits
    b = reloaded.prefill(reloaded.build_prompt(sample.messages, sample.images)).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_text_only_model_rejects_image_samples():
    loaded, _ = tiny_by_name("tiny-llava")
    language_model_only = TargetAdapter.__new__(TargetAdapter)
    language_model_only.is_vlm = False
    language_model_only.model = loaded.model
    with pytest.raises(ValueError, match="text-only model"):
        TargetAdapter.build_prompt(language_model_only, [], [object()])


def test_cache_argument_uses_the_name_the_forward_takes():
    """transformers 5.25 renamed `past_key_values` to `cache` (warning on every forward given the
    old name); 5.17 knows only the old one. A compiled module is asked through the one it wraps."""
    import torch

    from vispec_bench.engine.adapter import cache_argument

    class New(torch.nn.Module):
        def forward(self, x, cache=None):
            return x

    class Old(torch.nn.Module):
        def forward(self, x, past_key_values=None):
            return x

    wrapped = torch.nn.Module()
    wrapped._orig_mod = New()  # what torch.compile's OptimizedModule holds
    assert cache_argument(New(), 1) == {"cache": 1}
    assert cache_argument(Old(), 1) == {"past_key_values": 1}
    assert cache_argument(wrapped, 1) == {"cache": 1}
