"""The 7B-shape model for GPU engine measurements has LLaVA-1.5-7B's shapes (checked on the meta device)."""

import torch

from vispec_bench.models.shapes import llava15_7b_config
from vispec_bench.models.tiny import build_tokenizer


def test_llava15_7b_shapes_has_the_checkpoints_parameter_count_and_576_image_tokens():
    from transformers import LlavaForConditionalGeneration

    config = llava15_7b_config(build_tokenizer("<image>"))
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    parameters = sum(p.numel() for p in model.parameters())
    assert 7.05e9 < parameters < 7.07e9  # llava-hf/llava-1.5-7b-hf: 7,063,427,072
    vision = config.vision_config
    assert (vision.image_size // vision.patch_size) ** 2 == 576
    assert model.get_output_embeddings().weight.shape == (32064, 4096)
