"""The built-in suites, declared as a plug-in declares its own (torch-free: `list` reads it).

A third-party package adds a suite as an entry point in its pyproject.toml (group
`vispec_bench.suites`).
"""

from vispec_bench.plugins.registry import Entry

ENTRIES = [
    Entry("easyvqa", "suites.easyvqa:EasyVQA", "easy-VQA test split (real 64x64 shapes, 13 answers)",
          aliases=("easy-vqa",)),
    Entry("mmmu", "suites.mmmu:MMMU", "MMMU validation (30 subjects, up to 7 images), lmms-eval mmmu_val"),
    Entry("seedbench", "suites.seedbench:SEEDBench", "SEED-Bench image questions, lmms-eval seedbench",
          aliases=("seed-bench",)),
    Entry("scienceqa", "suites.scienceqa:ScienceQA", "ScienceQA-IMG test, lmms-eval scienceqa_img", aliases=("sqa",)),
    Entry("vqav2", "suites.vqav2:VQAv2", "VQAv2 validation, ten-annotator accuracy, lmms-eval vqav2_val"),
]
