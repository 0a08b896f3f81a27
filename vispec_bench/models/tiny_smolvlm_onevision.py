"""Tiny random-init SmolVLM / Idefics3 and LLaVA-OneVision targets (the real HF classes), built offline.

Same recipe as vispec_bench/models/tiny.py (its tokenizer, init and text shapes), with each
family's special tokens added to this family's tokenizer only (the other tiny models keep theirs):

- SmolVLM / Idefics3: a Llama text model, a SigLIP-style vision tower of 32x32 inputs (patch 8)
  and the pixel-shuffle connector (scale 2): 4 image tokens per sub-image. The image processor
  resizes an image to at most 64 px and splits it into up to 2x2 tiles of 32 px plus a global
  view, so one image is several runs of image tokens separated by tile tokens
  (`<fake_token_around_image><row_r_col_c>`, `<global-img>`).
- LLaVA-OneVision: a SigLIP vision tower (32x32, patch 8: 16 features per crop, no CLS), a Qwen2
  text model, anyres tiling over 32 px crops (`anyres_max_9`) with the image-newline feature: one
  run of image tokens per image.

SmolVLM's and LLaVA-OneVision's HF processors carry a video processor, which needs torchvision (a
CPU-only machine here cannot install it beside the local torch wheel), and SmolVLM's needs
num2words for its video prompts; the benchmark feeds images only, so the tiny builders use
image-only subclasses of HF's processors (as tiny._image_only_qwen25vl_processor_class does).
Idefics3's processor has no video part and is used as it is. The PIL image processors are
imported from their modules: transformers 5.17's top-level SmolVLM / Idefics3 `...Pil` names are
placeholders that demand torchvision.
"""

from __future__ import annotations

import torch

from vispec_bench.models.tiny import _finish, _text_config, build_tokenizer

# Vision towers of 32x32 inputs in 8x8 patches: every test runs in seconds on two CPU cores.
SMOLVLM_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      image_size=32, patch_size=8)
SIGLIP_VISION = dict(SMOLVLM_VISION, model_type="siglip_vision_model")
SPLIT_IMAGE_SIZE = 64  # the longest edge an image is resized to before splitting into 32 px tiles
SCALE_FACTOR = 2  # pixel shuffle: (32 / 8)^2 / 2^2 = 4 image tokens per sub-image
SMOLVLM_IMAGE_SEQ_LEN = (SMOLVLM_VISION["image_size"] // SMOLVLM_VISION["patch_size"]) ** 2 // SCALE_FACTOR ** 2
ONEVISION_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def _tokenizer_with(extra_tokens: list[str]):
    """The tiny models' tokenizer with this family's special tokens added (a new object: the
    other families' tokenizers are untouched)."""
    tokenizer = build_tokenizer("<image>")
    tokenizer.add_special_tokens({"additional_special_tokens": extra_tokens})
    return tokenizer


def _idefics3_tokens() -> list[str]:
    grid = SPLIT_IMAGE_SIZE // SMOLVLM_VISION["image_size"]
    tiles = [f"<row_{row}_col_{col}>" for row in range(1, grid + 1) for col in range(1, grid + 1)]
    return ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "<video>", *tiles]


def _image_only_smolvlm_processor_class():
    from transformers import SmolVLMProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlySmolVLMProcessor(SmolVLMProcessor):
        """SmolVLMProcessor without its video processor (torchvision) and video prompts (num2words).

        The image path (image splitting, tile tokens, the global view) is HF's own. Real
        checkpoints load HF's processor through AutoProcessor.
        """

        def __init__(self, image_processor=None, tokenizer=None, image_seq_len: int = 169, chat_template=None,
                     **kwargs):
            self.fake_image_token = "<fake_token_around_image>"
            self.image_token = "<image>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.end_of_utterance_token = "<end_of_utterance>"
            self.global_image_token = "<global-img>"
            self.video_token = "<video>"
            self.image_seq_len = image_seq_len
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

        def apply_chat_template(self, conversation, chat_template=None, **kwargs):
            # SmolVLMProcessor's override only adds video sampling defaults from its video processor.
            return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)

    return ImageOnlySmolVLMProcessor


def _smolvlm_image_processor():
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil as ImageProcessor

    return ImageProcessor(size={"longest_edge": SPLIT_IMAGE_SIZE},
                          max_image_size={"longest_edge": SMOLVLM_VISION["image_size"]})


def _build_split_image_model(config_name: str, model_name: str, processor, dtype, device, seed: int):
    import transformers

    tokenizer = processor.tokenizer
    config = getattr(transformers, config_name)(
        vision_config=SMOLVLM_VISION, text_config=dict(_text_config(tokenizer), model_type="llama"),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=SCALE_FACTOR,
        pad_token_id=tokenizer.pad_token_id)  # the top-level default (128002) is outside this vocabulary
    torch.manual_seed(seed)
    return _finish(getattr(transformers, model_name)(config), seed, dtype, device), processor


def build_tiny_smolvlm(dtype=torch.float32, device="cpu", seed: int = 0):
    tokenizer = _tokenizer_with(_idefics3_tokens())
    processor = _image_only_smolvlm_processor_class()(
        image_processor=_smolvlm_image_processor(), tokenizer=tokenizer, image_seq_len=SMOLVLM_IMAGE_SEQ_LEN,
        chat_template=tokenizer.chat_template)
    return _build_split_image_model("SmolVLMConfig", "SmolVLMForConditionalGeneration", processor, dtype, device, seed)


def build_tiny_idefics3(dtype=torch.float32, device="cpu", seed: int = 0):
    """Idefics3 (SmolVLM v1's class): the same shapes and tokens as tiny-smolvlm, HF's own processor."""
    from transformers import Idefics3Processor

    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil as ImageProcessor
    tokenizer = _tokenizer_with(_idefics3_tokens())
    image_processor = ImageProcessor(size={"longest_edge": SPLIT_IMAGE_SIZE},
                                     max_image_size={"longest_edge": SMOLVLM_VISION["image_size"]})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=SMOLVLM_IMAGE_SEQ_LEN, chat_template=tokenizer.chat_template)
    return _build_split_image_model("Idefics3Config", "Idefics3ForConditionalGeneration", processor, dtype, device,
                                    seed)


def _image_only_llava_onevision_processor_class():
    from transformers import LlavaOnevisionProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyLlavaOnevisionProcessor(LlavaOnevisionProcessor):
        """LlavaOnevisionProcessor without its video processor (torchvision); the image path
        (anyres tiling, the token count with image newlines) is HF's own. Real checkpoints
        load HF's processor through AutoProcessor."""

        def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                     vision_feature_select_strategy=None, chat_template=None, vision_aspect_ratio="anyres_max_9",
                     **kwargs):
            self.num_image_tokens = num_image_tokens
            self.vision_feature_select_strategy = vision_feature_select_strategy
            self.vision_aspect_ratio = vision_aspect_ratio
            self.image_token, self.video_token = "<image>", "<video>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    return ImageOnlyLlavaOnevisionProcessor


def build_tiny_llava_onevision(dtype=torch.float32, device="cpu", seed: int = 0):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil as ImageProcessor)
    tokenizer = _tokenizer_with(["<video>"])
    crop = SIGLIP_VISION["image_size"]
    image_processor = ImageProcessor(size={"height": crop, "width": crop}, image_grid_pinpoints=ONEVISION_PINPOINTS)
    processor = _image_only_llava_onevision_processor_class()(
        image_processor=image_processor, tokenizer=tokenizer,
        num_image_tokens=(crop // SIGLIP_VISION["patch_size"]) ** 2, vision_feature_select_strategy="full",
        chat_template=tokenizer.chat_template, vision_aspect_ratio="anyres_max_9")
    ids = tokenizer.convert_tokens_to_ids
    config = LlavaOnevisionConfig(
        vision_config=SIGLIP_VISION, text_config=dict(_text_config(tokenizer), model_type="qwen2"),
        image_token_index=ids("<image>"), video_token_index=ids("<video>"), vision_feature_select_strategy="full",
        vision_feature_layer=-1, image_grid_pinpoints=ONEVISION_PINPOINTS, vision_aspect_ratio="anyres_max_9")
    torch.manual_seed(seed)
    return _finish(LlavaOnevisionForConditionalGeneration(config), seed, dtype, device), processor
