"""The run configuration, importable without torch (the CLI reads its defaults)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunConfig:
    # The default benchmark (README): the testbed VLM, every trained draft, long answers.
    model: str = "testbed"
    methods: list[str] = field(default_factory=lambda: ["medusa", "eagle2", "vispec"])
    suite: str = "easyvqa"
    prompt_mode: str = "long"
    fixtures: bool = False  # the suite's bundled offline rows instead of the real dataset
    dataset_path: str | None = None  # hub id or local directory overriding the suite's default
    dataset_name: str | None = None
    split: str | None = None
    revision: str | None = None
    limit: int | None = 5
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
    method_args: list[str] = field(default_factory=list)
    warmup: bool = True
    repeats: int = 1  # timed passes over all samples, so a speedup comes with its spread
    profile_rounds: bool = True  # an extra untimed pass per sample that splits rounds into phases


def cache_dir() -> Path:
    """Where converted and built artefacts live: $VISPEC_BENCH_CACHE, default ~/.cache/vispec_bench."""
    return Path(os.environ.get("VISPEC_BENCH_CACHE", Path.home() / ".cache" / "vispec_bench"))


@dataclass
class BuildConfig:
    device: str = "auto"
    seed: int = 0
    work: str = ""  # default: cache_dir()/testbed-build/seed<seed>
    pretrain_steps: int = 300
    pretrain_batch: int = 64
    vision_steps: int = 1000
    vision_batch: int = 8
    vision_lr: float = 1e-3
    vision_target: float = 0.93  # held-out first-token accuracy that ends stage 2 early
    vision_train_tower: bool = False  # stage 2 also trains the tower (off: the probe-trained tower stays frozen)
    lora_rank: int = 8  # LoRA on the language model's q/v projections in stage 2 (0 = frozen language model)
    vision_long_examples: int = 320  # long-answer targets written by the base SmolLM2 (0 = short answers only)
    eval_every: int = 100
    eval_questions: int = 256
    data_samples: int = 240
    data_max_new_tokens: int = 256
    draft_vocab: int = 4096
    draft_steps: int = 1200
    install: bool = True

    def work_dir(self) -> Path:
        return Path(self.work) if self.work else cache_dir() / "testbed-build" / f"seed{self.seed}"


