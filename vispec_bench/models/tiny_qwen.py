"""Tiny random-init Qwen2-VL and Qwen3-VL (the real HF classes), built offline like those of
vispec_bench.models.tiny: the same locally trained tokenizer and chat template, real image
processors, HF's processor classes without their video processor.

Qwen2-VL has Qwen2.5-VL's 3-D M-RoPE with contiguous sections; Qwen3-VL interleaves the three
sections over the rotary frequencies and adds "deepstack" features: the outputs of some vision
blocks, added to the hidden states at image positions after the first decoder layers. The tiny
shapes keep both: Qwen3-VL's mrope_section [4, 2, 2] over 8 frequencies splits like the real
[24, 20, 20] over 64, and both of its vision blocks feed a deepstack layer.
"""

from __future__ import annotations

import functools

import torch

from vispec_bench.models.tiny import _finish, _text_config, build_tokenizer

QWEN_IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


@functools.lru_cache(maxsize=None)
def image_only_processor_class(base_name: str):
    """HF's Qwen processor class `base_name` (from transformers) without its video processor.

    HF's video processors need torchvision, which a CPU-only machine here cannot install beside
    the local torch wheel; the benchmark feeds images only. Real checkpoints load HF's own
    processor through AutoProcessor (vispec_bench.models.loading says what to install if that fails).
    """
    import transformers
    from transformers.processing_utils import ProcessorMixin

    base = getattr(transformers, base_name)

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        ids = tokenizer.convert_tokens_to_ids
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.vision_start_token, self.vision_end_token = "<|vision_start|>", "<|vision_end|>"
        self.image_token_id, self.video_token_id = ids(self.image_token), ids(self.video_token)
        self.vision_start_token_id, self.vision_end_token_id = ids(self.vision_start_token), ids(self.vision_end_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return type(f"ImageOnly{base_name}", (base,), {"__init__": __init__, "__doc__": f"{base_name}, images only."})


def _processor(base_name: str, patch_size: int = 8):
    from transformers import Qwen2VLImageProcessor

    tokenizer = build_tokenizer(QWEN_IMAGE_PLACEHOLDER)
    # Images resized to 32x32 .. 64x64 pixels: 4x4 .. 8x8 patches of 8, merged 2x2 into 4 .. 16 image tokens.
    image_processor = Qwen2VLImageProcessor(min_pixels=32 * 32, max_pixels=64 * 64, patch_size=patch_size,
                                            merge_size=2, temporal_patch_size=2)
    return image_only_processor_class(base_name)(image_processor=image_processor, tokenizer=tokenizer,
                                                 chat_template=tokenizer.chat_template)


def _vision_token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def build_tiny_qwen2vl(dtype=torch.float32, device="cpu", seed: int = 0):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    processor = _processor("Qwen2VLProcessor")
    tokenizer = processor.tokenizer
    config = Qwen2VLConfig(
        text_config=dict(_text_config(tokenizer), rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        # hidden_size is the patch merger's output: the language model's width
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=8,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        **_vision_token_ids(tokenizer),
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return _finish(Qwen2VLForConditionalGeneration(config), seed, dtype, device), processor


def build_tiny_qwen3vl(dtype=torch.float32, device="cpu", seed: int = 0):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    processor = _processor("Qwen3VLProcessor")
    tokenizer = processor.tokenizer
    text = _text_config(tokenizer)
    head_dim = text["hidden_size"] // text["num_attention_heads"]  # 16: 8 rotary frequencies
    config = Qwen3VLConfig(
        text_config=dict(text, head_dim=head_dim, rope_parameters={
            "rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=8, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           num_position_embeddings=64, deepstack_visual_indexes=[0, 1]),
        **_vision_token_ids(tokenizer), tie_word_embeddings=False)
    torch.manual_seed(seed)
    return _finish(Qwen3VLForConditionalGeneration(config), seed, dtype, device), processor
