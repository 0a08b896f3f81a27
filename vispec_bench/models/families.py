"""The target families `--model` loads from a checkpoint, and how each is tested (torch-free:
`list --models` prints it; `loading.SUPPORTED_MODEL_TYPES` is built from it).

A family is a config.json `model_type`. Each VLM family has a tiny random-init model of the same
HF class (vispec_bench.models.tiny*) on which the tests named here run offline, in float32, on
transformers 5.17 and 5.24: AR equals HF `generate` token for token, the image-token id check,
one- and two-image prompts, and every lossless method's ids equal AR's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    model_type: str
    hf_class: str  # the transformers class that runs it
    example: str  # a hub id of a real checkpoint
    tiny: str  # the registered tiny model of the same class ("" for text-only sanity families)
    tests: str  # where and how it is tested


_MATRIX = "tests/test_drafts.py, test_vispec.py, test_engines.py, ... (every method and engine)"
FAMILIES = [
    Family("llava", "LlavaForConditionalGeneration", "llava-hf/llava-1.5-7b-hf", "tiny-llava", _MATRIX),
    Family("llava_next", "LlavaNextForConditionalGeneration", "llava-hf/llava-v1.6-vicuna-7b-hf", "tiny-llava-next",
           _MATRIX),
    Family("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen/Qwen2.5-VL-3B-Instruct", "tiny-qwen25vl", _MATRIX),
    Family("qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen/Qwen2-VL-2B-Instruct", "tiny-qwen2vl",
           "tests/test_family_qwen.py (3-D mrope offset, static engine)"),
    Family("qwen3_vl", "Qwen3VLForConditionalGeneration", "Qwen/Qwen3-VL-2B-Instruct", "tiny-qwen3vl",
           "tests/test_family_qwen.py (interleaved mrope, deepstack features in prefill only)"),
    Family("gemma3", "Gemma3ForConditionalGeneration", "google/gemma-3-4b-it", "tiny-gemma3",
           "tests/test_family_gemma3.py (bidirectional image attention, sliding window exact past the window)"),
    Family("smolvlm", "SmolVLMForConditionalGeneration", "HuggingFaceTB/SmolVLM2-2.2B-Instruct", "tiny-smolvlm",
           "tests/test_family_smolvlm_onevision.py (tiles + global view: one image span per sub-image)"),
    Family("idefics3", "Idefics3ForConditionalGeneration", "HuggingFaceTB/SmolVLM-256M-Instruct", "tiny-idefics3",
           "tests/test_family_smolvlm_onevision.py (SmolVLM's code path: AR, eagle2, id checks, loading)"),
    Family("llava_onevision", "LlavaOnevisionForConditionalGeneration", "llava-hf/llava-onevision-qwen2-7b-ov-hf",
           "tiny-llava-onevision", "tests/test_family_smolvlm_onevision.py (anyres tiling)"),
    Family("llama", "AutoModelForCausalLM", "HuggingFaceTB/SmolLM2-135M-Instruct", "",
           "text-only sanity runs; its layers run inside the testbed"),
    Family("qwen2", "AutoModelForCausalLM", "Qwen/Qwen2.5-0.5B-Instruct", "", "text-only sanity runs"),
]
