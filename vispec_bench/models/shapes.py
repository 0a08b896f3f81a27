"""Random-init models with real checkpoints' shapes (config only, no weights): for engine and
roofline measurements where the function does not matter but the bytes per forward do.

`llava15-7b-shapes`: LlavaForConditionalGeneration with llava-hf/llava-1.5-7b-hf's shapes — a
Llama-2-7B decoder (4,096 hidden, 11,008 MLP, 32 layers, 32 heads, vocab 32,064) behind a
CLIP ViT-L/14 at 336 px (576 image tokens per image). About 7.06 B parameters: 14 GB in bf16,
a GPU's job (`python -m vispec_bench roofline --model llava15-7b-shapes --dtypes bfloat16
--device cuda`, or `run --methods oracle --engines eager,compiled`). Its outputs are noise; the
oracle's τ is known (its depth + 1), so the measured speedup shows how much of τ an engine
turns into wall-clock time. The tokenizer is the tiny models' (its ids are a subset of 32,064).
"""

from __future__ import annotations

import torch

LLAVA15_7B_TEXT = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, vocab_size=32064)
LLAVA15_7B_VISION = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                         num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14,
                         projection_dim=768)


def llava15_7b_config(tokenizer):
    from transformers import LlavaConfig

    text = dict(LLAVA15_7B_TEXT, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                pad_token_id=tokenizer.pad_token_id)
    return LlavaConfig(vision_config=LLAVA15_7B_VISION, text_config=text, vision_feature_layer=-2,
                       image_token_id=tokenizer.convert_tokens_to_ids("<image>"))


def build_llava15_7b_shapes(dtype=torch.bfloat16, device="cpu", seed: int = 0):
    from transformers import LlavaForConditionalGeneration

    from vispec_bench.models.tiny import llava_processor

    processor = llava_processor(LLAVA15_7B_VISION["image_size"], LLAVA15_7B_VISION["patch_size"])
    tokenizer = processor.tokenizer
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the target dtype on the target device: no float32 copy of 7 B
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(llava15_7b_config(tokenizer))
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), processor
