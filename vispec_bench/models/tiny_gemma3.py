"""A tiny random-init Gemma3ForConditionalGeneration (SigLIP vision + Gemma 3 text), built offline.

The tokenizer is the local byte-level BPE of vispec_bench.models.tiny with Gemma's special
tokens added to this copy (the other tiny models' tokenizers are untouched), and a chat
template in Gemma's turn format. The processor is HF's Gemma3Processor over a PIL
Gemma3ImageProcessor sized to the tiny SigLIP tower.

The text model alternates a sliding-window layer and a full-attention layer (the real models
interleave 5:1) with a window of SLIDING_WINDOW tokens, shorter than a one-image prompt, so
the tests run past the window: the adapter must reproduce HF's sliding masks (see
vispec_bench.engine.gemma3).
"""

from __future__ import annotations

import torch

from vispec_bench.models.tiny import TEXT_CONFIG, _finish, _text_config, _trained_tokenizer_json

GEMMA_TURN_TEMPLATE = (
    "{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
# Gemma's model-specific special tokens, as its tokenizer_config.json names them; the
# processor reads tokenizer.boi_token / image_token / eoi_token.
GEMMA_IMAGE_TOKENS = {"boi_token": "<start_of_image>", "image_token": "<image_soft_token>",
                      "eoi_token": "<end_of_image>"}
GEMMA_TURN_TOKENS = ["<start_of_turn>", "<end_of_turn>"]

SIGLIP_CONFIG = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, image_size=32, patch_size=8)
MM_TOKENS_PER_IMAGE = 16  # the 4 x 4 patch grid, pooled with kernel 1: 16 soft tokens per image
SLIDING_WINDOW = 24  # tokens a sliding layer sees (itself included); a one-image prompt is ~50


def gemma3_tokenizer():
    """The local BPE tokenizer (vispec_bench.models.tiny) with Gemma's turn and image tokens
    added after its vocabulary, `<end_of_turn>` as EOS. The image tokens are named special
    tokens (tokenizer.boi_token, .image_token_id, ...), saved and reloaded with the tokenizer
    as Gemma's own tokenizer_config.json declares them."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_trained_tokenizer_json())
    backend.add_special_tokens([AddedToken(token, special=True)
                                for token in GEMMA_TURN_TOKENS + list(GEMMA_IMAGE_TOKENS.values())])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<end_of_turn>", pad_token="<|endoftext|>",
                                        extra_special_tokens=dict(GEMMA_IMAGE_TOKENS))
    tokenizer.chat_template = GEMMA_TURN_TEMPLATE
    return tokenizer


def gemma3_processor():
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor

    tokenizer = gemma3_tokenizer()
    image_size = SIGLIP_CONFIG["image_size"]
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size},
                                              do_pan_and_scan=False)
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=GEMMA_TURN_TEMPLATE,
                           image_seq_length=MM_TOKENS_PER_IMAGE)


def build_tiny_gemma3(dtype=torch.float32, device="cpu", seed: int = 0):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    processor = gemma3_processor()
    tokenizer = processor.tokenizer
    head_dim = TEXT_CONFIG["hidden_size"] // TEXT_CONFIG["num_attention_heads"]
    text_config = dict(_text_config(tokenizer), model_type="gemma3_text", head_dim=head_dim,
                       query_pre_attn_scalar=head_dim, sliding_window=SLIDING_WINDOW,
                       layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=False)
    config = Gemma3Config(text_config=text_config, vision_config=SIGLIP_CONFIG, mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
                          image_token_index=tokenizer.image_token_id, boi_token_index=tokenizer.boi_token_id,
                          eoi_token_index=tokenizer.eoi_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return _finish(Gemma3ForConditionalGeneration(config), seed, dtype, device), processor
