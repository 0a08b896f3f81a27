"""`python -m vispec_bench testbed build`: train the testbed's vision side and its drafts from a seed.

Stages, each resumable (re-running the command continues where it stopped; a finished stage
is skipped), all under a work directory (default $VISPEC_BENCH_CACHE/testbed-build/seed<K>):

1. pretrain — the CLIP-style tower alone learns the image's shape and colour: two linear
   probes read *every* patch feature of the layer the projector uses, so each of the 64 image
   tokens carries the whole image's labels (labels from the easy-VQA *train* questions, see
   suites.easyvqa.image_labels). Cheap (no language model). A first build probed only the mean
   patch feature: the language model then never learned to read shapes (held-out open shape
   questions ~21 %, it answered "circle") — shape is spread over patches, colour is not.
2. vision — tower + projector (and, with `lora_rank` > 0, LoRA factors on SmolLM2's q/v
   projections) learn with LLaVA's loss on the one-word answers of easy-VQA train questions,
   in the suite's short-answer prompt; the base language-model weights stay frozen. Stops at
   `vision_steps` or as soon as the held-out accuracy (test questions, first answer token,
   teacher-forced) reaches `vision_target`. The weights of the best held-out evaluation (on a
   tie the later) are then rounded to bf16 — the form that ships — into WORK/weights, and every
   later stage loads exactly that target from there (LoRA merged at load).
3. data — the target answers easy-VQA train questions in long-answer mode (gen-data).
4. drafts — Medusa, EAGLE-2, then ViSpec (stage 2, initialised from the EAGLE-2 draft), all
   through `train` with a reduced draft vocabulary (token map from the generated answers).
5. install — bf16 safetensors into vispec_bench/models/testbed/weights/ with provenance.json.

Why LoRA: with SmolLM2 frozen, the held-out accuracy plateaued near 69 % (step 300 of the
first build; open shape/colour questions 16-30 %), far from the 90 % target (README).

Modules: stages (the runner: order, resume, settings check, `build`), pretrain, vision (with
vision_examples), data, drafts, install, and common (work-directory log and markers, the testbed
loaded from the work directory's weights).
"""

from vispec_bench.models.testbed.build.install import install
from vispec_bench.models.testbed.build.stages import build

__all__ = ["build", "install"]
