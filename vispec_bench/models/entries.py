"""The built-in models, declared as a plug-in declares its own (torch-free: `list` reads it).

Each target is a builder `(dtype, device, seed) -> (model, processor)`. A third-party package
adds one as an entry point in its pyproject.toml (group `vispec_bench.models`).
"""

from vispec_bench.plugins.registry import Entry

ENTRIES = [
    Entry("testbed", "vispec_bench.models.testbed.model:build_testbed",
          "SmolLM2-135M-Instruct (real weights) + trained 64x64 vision tower in LLaVA (needs the built weights)"),
    Entry("testbed-576", "vispec_bench.models.testbed.model:build_testbed_576",
          "the testbed at LLaVA-1.5's 576 image tokens per image (96x96 input, patch 4): its own tower, LoRA and drafts"),
    Entry("testbed-untrained", "vispec_bench.models.testbed.model:build_untrained_testbed",
          "the testbed with a seeded random vision tower: real language model, for pipeline checks"),
    Entry("testbed-576-untrained", "vispec_bench.models.testbed.model:build_untrained_testbed_576",
          "testbed-untrained at 576 image tokens per image"),
    Entry("tiny-llava", "vispec_bench.models.tiny:build_tiny_llava",
          "random-init LlavaForConditionalGeneration with a locally trained BPE tokenizer"),
    Entry("tiny-llava-next", "vispec_bench.models.tiny:build_tiny_llava_next",
          "random-init LlavaNextForConditionalGeneration (any-resolution tiling)"),
    Entry("tiny-qwen25vl", "vispec_bench.models.tiny:build_tiny_qwen25vl",
          "random-init Qwen2_5_VLForConditionalGeneration (3-D mrope)"),
    Entry("tiny-qwen2vl", "vispec_bench.models.tiny_qwen:build_tiny_qwen2vl",
          "random-init Qwen2VLForConditionalGeneration (3-D mrope, contiguous sections)"),
    Entry("tiny-qwen3vl", "vispec_bench.models.tiny_qwen:build_tiny_qwen3vl",
          "random-init Qwen3VLForConditionalGeneration (interleaved 3-D mrope, deepstack visual features)"),
    Entry("tiny-gemma3", "vispec_bench.models.tiny_gemma3:build_tiny_gemma3",
          "random-init Gemma3ForConditionalGeneration (SigLIP; bidirectional image attention; sliding window 24 < prompt)"),
    Entry("tiny-smolvlm", "vispec_bench.models.tiny_smolvlm_onevision:build_tiny_smolvlm",
          "random-init SmolVLMForConditionalGeneration (image splitting into tiles + global view, pixel shuffle)"),
    Entry("tiny-idefics3", "vispec_bench.models.tiny_smolvlm_onevision:build_tiny_idefics3",
          "random-init Idefics3ForConditionalGeneration (SmolVLM v1's class; tiny-smolvlm's shapes)"),
    Entry("tiny-llava-onevision", "vispec_bench.models.tiny_smolvlm_onevision:build_tiny_llava_onevision",
          "random-init LlavaOnevisionForConditionalGeneration (SigLIP + Qwen2, anyres_max_9 tiling)"),
    Entry("llava15-7b-shapes", "vispec_bench.models.shapes:build_llava15_7b_shapes",
          "random-init LLaVA-1.5-7B shapes (7.06 B parameters, 576 image tokens): engine/roofline on a GPU"),
]
