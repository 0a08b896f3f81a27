"""Every command's configuration, importable without torch: the CLI builds its flags from these.

Each field is defined once, with its default and its help text (`setting(...)`); the flags of
`run`, `gen-data`, `train` and `testbed build`, their `--config FILE.toml` keys and the library
defaults all come from here (vispec_bench/running/config_flags.py turns fields into flags).
The target settings (model, dtype, device, seed) are shared by inheritance.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field
from pathlib import Path

DTYPES = ("auto", "float32", "bfloat16", "float16")


def setting(default=MISSING, help: str = "", *, factory=None, choices=None, flag: str | None = None,
            nargs: str | None = None, metavar: str | None = None, aliases: tuple[str, ...] = ()):
    """A config field with its flag's help. `flag` renames the flag (booleans: the switch that
    flips the default, e.g. "--no-profile"); `aliases` are other spellings of the same flag;
    `nargs="*"` takes several values, other lists take one comma-separated value."""
    metadata = {"help": help, "choices": choices, "flag": flag, "nargs": nargs, "metavar": metavar,
                "aliases": aliases}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(kw_only=True)
class MachineSettings:
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    seed: int = setting(0, "seeds sample choice, random drafts and training")


@dataclass(kw_only=True)
class TargetSettings(MachineSettings):
    """The target model and how it runs: shared by run, gen-data and train."""

    model: str = setting("testbed", "registered name (see `list --models`), local checkpoint directory, or hub id")
    dtype: str = setting("auto", "auto = bfloat16 on CUDA, float32 on CPU", choices=DTYPES)


@dataclass(kw_only=True)
class RunConfig(TargetSettings):
    # The default benchmark (README): the testbed VLM, every trained draft, long answers.
    methods: list[str] = setting(factory=lambda: ["medusa", "eagle2", "vispec"],
                                 help="comma-separated methods; ar always runs as the baseline")
    suite: str = setting("easyvqa", "registered suite (see `list --suites`)")
    prompt_mode: str = setting("long", "short answers (the suite's post-prompt) or long answers (the papers' setting)",
                               choices=("short", "long"))
    fixtures: bool = setting(False, "use the suite's bundled offline rows (real column schema, generated images)")
    dataset_path: str | None = setting(None, "hub id or local directory instead of the suite's")
    dataset_name: str | None = setting(None, "dataset config name")
    split: str | None = setting(None, "dataset split (default: the suite's)")
    revision: str | None = setting(None, "dataset revision (commit, tag or branch)")
    limit: int | None = setting(5, "number of samples (fixed-seed choice)")
    max_new_tokens: int = setting(128, "token cap per sample, the same for AR and every method")
    temperature: float = setting(0.0, "0 = greedy")
    top_p: float = setting(1.0, "nucleus sampling threshold (1 = off)")
    top_k: int = setting(0, "0 = off")
    method_args: list[str] = setting(factory=list, help="method options, e.g. oracle.depth=6", nargs="*",
                                     metavar="METHOD.KEY=VALUE")
    engines: list[str] = setting(factory=lambda: ["eager"], aliases=("--engine",),
                                 help="comma-separated decode engines (eager, static, compiled): AR and every "
                                      "method run on each, interleaved per sample; --engine X for one")
    warmup: bool = setting(True, "skip the untimed warm-up decode of each method")
    repeats: int = setting(1, "timed passes over all samples; the speedup's spread across them is reported")
    profile_rounds: bool = setting(True, "skip the untimed profiling pass that splits rounds into "
                                         "draft/verify/accept time", flag="--no-profile")


@dataclass(kw_only=True)
class GenDataConfig(TargetSettings):
    model: str = setting(help="the target that answers (a registered name, directory or hub id)")
    suite: str = setting("easyvqa", "registered suite the prompts come from")
    split: str | None = setting("train", "suite split to draw prompts from (not the benchmark's)")
    prompt_mode: str = setting("long", "short or long answers", choices=("short", "long"))
    prompt_suffix: str = setting("", 'appended to each question, e.g. "Please answer with at least 1000 words."')
    limit: int | None = setting(64, "number of prompts (fixed-seed choice)")
    max_new_tokens: int = setting(256, "answer length cap")
    fixtures: bool = setting(False, "the suite's bundled offline rows")
    batch_size: int = setting(1, "> 1: HF generate on left-padded batches (faster on a CPU; ids may differ from "
                                 "the engine's at near-ties)")


@dataclass(kw_only=True)
class TrainConfig(TargetSettings):
    method: str = setting(help="the method whose draft is trained (eagle2, medusa, vispec)")
    model: str = setting(help="the target the draft is trained for")
    data: str = setting(help="a gen-data output directory")
    out: str = setting(help="checkpoint directory (draft.safetensors + draft_config.json)")
    dtype: str = setting("float32", "the target's dtype; the draft always trains in float32", choices=DTYPES)
    steps: int = setting(300, "optimiser steps")
    lr: float = setting(1e-3, "peak learning rate (AdamW, linear warm-up then cosine decay)")
    warmup_steps: int = setting(20, "linear warm-up steps")
    grad_clip: float = setting(0.5, "gradient-norm clip")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    eval_fraction: float = setting(0.1, "held-out share of the rows")
    eval_every: int = setting(50, "steps between held-out evaluations")
    save_every: int = setting(100, "steps between checkpoints")
    init: str | None = setting(None, "start from this checkpoint (e.g. an EAGLE-2 draft for ViSpec stage 2)")
    method_args: list[str] = setting(factory=list, help="method options, e.g. eagle2.mtp_steps=1", nargs="*",
                                     metavar="METHOD.KEY=VALUE")
    resume: bool = setting(False, "continue the checkpoint in --out")
    feature_cache_mb: int = setting(2048, "keep teacher features of this many MB in memory across epochs")


def cache_dir() -> Path:
    """Where converted and built artefacts live: $VISPEC_BENCH_CACHE, default ~/.cache/vispec_bench."""
    return Path(os.environ.get("VISPEC_BENCH_CACHE", Path.home() / ".cache" / "vispec_bench"))


@dataclass(kw_only=True)
class BuildConfig(MachineSettings):
    """`testbed build`: the target is always the testbed, trained and distilled in float32."""

    work: str = setting("", "work directory (default $VISPEC_BENCH_CACHE/testbed-build/seed<seed>)")
    pretrain_steps: int = setting(300, "stage 1: vision-tower pretraining steps")
    pretrain_batch: int = setting(64, "stage 1 batch size")
    vision_steps: int = setting(1000, "stage 2: vision alignment steps")
    vision_batch: int = setting(8, "stage 2 batch size")
    vision_lr: float = setting(1e-3, "stage 2 learning rate")
    vision_target: float = setting(0.93, "held-out first-token accuracy that ends stage 2 early")
    vision_train_tower: bool = setting(False, "stage 2 also trains the vision tower (default: only projector + "
                                              "LoRA)", flag="--train-tower")
    lora_rank: int = setting(8, "LoRA rank on the language model's q/v projections in stage 2 (0 = frozen)")
    vision_long_examples: int = setting(320, "long-answer targets written by the base SmolLM2 (0 = short only)")
    eval_every: int = setting(100, "stage 2 steps between evaluations")
    eval_questions: int = setting(256, "held-out questions per evaluation")
    data_samples: int = setting(240, "stage 3: prompts answered for draft training")
    data_max_new_tokens: int = setting(256, "stage 3 answer length cap")
    draft_vocab: int = setting(4096, "reduced draft vocabulary size")
    draft_steps: int = setting(1200, "stage 4: draft training steps (ViSpec: half, from the EAGLE-2 draft)")
    install: bool = setting(True, "leave the package's weights alone (the results stay in the work directory)")

    def work_dir(self) -> Path:
        return Path(self.work) if self.work else cache_dir() / "testbed-build" / f"seed{self.seed}"
