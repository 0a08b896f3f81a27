"""Tiny random-init VLMs of the real HF classes, built offline for tests and smoke runs.

Each builder returns (model, processor). The tokenizer is a byte-level BPE trained here on
easy-VQA questions, with the special tokens of each family; the processors are the real HF
processor classes (PIL image backends, so no torchvision is needed). Everything is
deterministic: the same seed gives the same weights and the same tokenizer.
"""

from __future__ import annotations

import functools

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}IMAGE_PLACEHOLDER"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>",
                  "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]

# Small shapes: every test runs in seconds on two CPU cores.
TEXT_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=4096)
CLIP_CONFIG = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=2, image_size=32, patch_size=8)
# Random weights with the default init (std 0.02) give nearly flat next-token distributions,
# where greedy decoding sits on float near-ties; a wider init gives peaked, realistic margins.
INIT_STD = 0.1


@functools.lru_cache(maxsize=None)
def _trained_tokenizer_json() -> str:
    import easy_vqa
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    questions, answers, _ = easy_vqa.get_train_questions()
    corpus = list(questions[:5000]) + list(answers[:2000])
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer.to_str()


def build_tokenizer(image_placeholder: str):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json()),
                                        eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML_TEMPLATE.replace("IMAGE_PLACEHOLDER", image_placeholder)
    return tokenizer


def _finish(model, seed: int, dtype: torch.dtype, device: str):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:  # matrices and conv kernels; norms and biases keep HF's init
                param.copy_(torch.randn(param.shape, generator=generator) * INIT_STD)
    model.generation_config.pad_token_id = model.config.text_config.pad_token_id
    return model.to(device=device, dtype=dtype).eval()


def _text_config(tokenizer) -> dict:
    return dict(TEXT_CONFIG, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                bos_token_id=None, pad_token_id=tokenizer.pad_token_id)


def llava_processor(image_size: int, patch_size: int):
    """A LlavaProcessor over the local tokenizer for a CLIP tower of this input size and patch."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    tokenizer = build_tokenizer("<image>")
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy="default", chat_template=tokenizer.chat_template,
                          image_token="<image>", num_additional_image_tokens=1)


def build_tiny_llava(dtype=torch.float32, device="cpu", seed: int = 0):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    processor = llava_processor(CLIP_CONFIG["image_size"], CLIP_CONFIG["patch_size"])
    tokenizer = processor.tokenizer
    config = LlavaConfig(vision_config=CLIP_CONFIG, text_config=dict(_text_config(tokenizer), model_type="llama"),
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    return _finish(LlavaForConditionalGeneration(config), seed, dtype, device), processor


def build_tiny_llava_next(dtype=torch.float32, device="cpu", seed: int = 0):
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
                              LlavaNextProcessor)

    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    tokenizer = build_tokenizer("<image>")
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                              image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                                   vision_feature_select_strategy="default", chat_template=tokenizer.chat_template,
                                   image_token="<image>", num_additional_image_tokens=1)
    config = LlavaNextConfig(vision_config=CLIP_CONFIG,
                             text_config=dict(_text_config(tokenizer), model_type="llama"),
                             image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                             image_grid_pinpoints=pinpoints)
    torch.manual_seed(seed)
    return _finish(LlavaNextForConditionalGeneration(config), seed, dtype, device), processor


def _image_only_qwen25vl_processor_class():
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen25VLProcessor(Qwen2_5_VLProcessor):
        """Qwen2_5_VLProcessor without its video processor.

        HF's video processor needs torchvision, which a CPU-only machine here cannot install
        beside the local torch wheel; the benchmark feeds images only. Real checkpoints load
        HF's own processor through AutoProcessor.
        """

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwen25VLProcessor


def build_tiny_qwen25vl(dtype=torch.float32, device="cpu", seed: int = 0):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

    tokenizer = build_tokenizer("<|vision_start|><|image_pad|><|vision_end|>")
    image_processor = Qwen2VLImageProcessor(min_pixels=32 * 32, max_pixels=64 * 64, patch_size=8, merge_size=2,
                                            temporal_patch_size=2)
    processor = _image_only_qwen25vl_processor_class()(image_processor=image_processor, tokenizer=tokenizer,
                                                        chat_template=tokenizer.chat_template)
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(_text_config(tokenizer), rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=8, spatial_merge_size=2, temporal_patch_size=2, window_size=32,
                           fullatt_block_indexes=[1], in_channels=3),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return _finish(Qwen2_5_VLForConditionalGeneration(config), seed, dtype, device), processor
