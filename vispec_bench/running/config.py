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

from vispec_bench.errors import InputError

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
    method: str = setting(help="the method whose draft is trained (eagle2, eaglevlm, medusa, vispec, ...)")
    model: str = setting(help="the target the draft is trained for")
    data: str | None = setting(None, metavar="DIR", help="a gen-data output directory: its answers are the training targets; with "
                                     "--online only its prompts and images are read")
    out: str = setting(help="checkpoint directory (draft.safetensors + draft_config.json)")
    dtype: str = setting("float32", "the target's dtype; the draft always trains in float32", choices=DTYPES)
    online: bool = setting(False, "online logit distillation (SpecVLM): no corpus on disk; the target answers each "
                                  "prompt of --data or --suite greedily when it is first used (answers kept in "
                                  "memory for the run, regenerated by --resume) and its features and logits are "
                                  "recomputed at every step")
    suite: str | None = setting(None, metavar="NAME", help="--online: draw the prompts from this registered suite instead of --data "
                                      "(the selection gen-data makes)")
    split: str | None = setting("train", "--online --suite: suite split to draw prompts from")
    prompt_mode: str = setting("long", "--online --suite: short or long answers", choices=("short", "long"))
    prompt_suffix: str = setting("", "--online --suite: appended to each question, as gen-data's")
    limit: int | None = setting(64, "--online --suite: number of prompts (fixed-seed choice)")
    fixtures: bool = setting(False, "--online --suite: the suite's bundled offline rows")
    max_new_tokens: int = setting(256, "--online: answer length cap of the target's greedy answers")
    steps: int | None = setting(None, "optimiser steps (default 300 unless --epochs is given)")
    epochs: int | None = setting(None, "instead of --steps: passes over the training rows (steps = epochs x the "
                                       "training rows of one process)")
    snapshot_epochs: list[str] = setting(factory=list, metavar="E1,E2,...",
                                         help="at the end of each listed epoch, also write a loadable copy of the "
                                              "draft to OUT/epoch-N/ (e.g. 1,2,4,8 for a training-time scaling "
                                              "plot)")
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
    feature_cache_mb: int = setting(2048, "offline only: keep teacher features of this many MB in memory across "
                                          "epochs (--online recomputes them at every step)")
    feature_dir: str = setting("", metavar="DIR", help="offline only: keep teacher features on disk in DIR, shared "
                                                      "by every train run on the same rows and target (a sub-folder "
                                                      "per target and captured layers); a row found there is not "
                                                      "recomputed")

    def total_steps(self, steps_per_epoch: int) -> int:
        """--steps, or --epochs x steps_per_epoch; 300 when neither is given (check() refuses both)."""
        return self.epochs * steps_per_epoch if self.epochs is not None else (self.steps or 300)

    def snapshots(self, steps_per_epoch: int) -> dict[int, int]:
        """{step: epoch} of the --snapshot-epochs, each checked to end within the run."""
        total = self.total_steps(steps_per_epoch)
        epochs = self._snapshot_epochs()
        last = total // steps_per_epoch
        beyond = [e for e in epochs if e < 1 or e > last]
        if beyond:
            raise InputError(f"--snapshot-epochs {','.join(map(str, beyond))}: the run has epochs 1..{last} "
                             f"({total} steps of {steps_per_epoch} per epoch)")
        return {epoch * steps_per_epoch: epoch for epoch in sorted(set(epochs))}

    def _snapshot_epochs(self) -> list[int]:
        epochs = []
        for text in self.snapshot_epochs:
            try:
                epochs.append(int(text))
            except ValueError:
                raise InputError(f"--snapshot-epochs takes whole epoch numbers, got {text!r}") from None
        return epochs

    def check(self) -> None:
        """What can be checked before any data or model is read: the length of the run and where
        its rows come from (--data offline; --online with --data or --suite)."""
        if self.epochs is not None and self.steps is not None:
            raise InputError(f"give --steps or --epochs, not both (got --steps {self.steps} --epochs {self.epochs})")
        for flag, value in (("--epochs", self.epochs), ("--steps", self.steps)):
            if value is not None and value < 1:
                raise InputError(f"{flag} must be >= 1, got {value}")
        self._snapshot_epochs()
        if not self.online:
            if self.suite is not None:
                raise InputError(f"--suite {self.suite} is a prompt source of --online training; offline training "
                                 "reads the answers of --data DIR (a gen-data output)")
            if self.data is None:
                raise InputError("train needs --data DIR (a gen-data output), or --online with --data DIR or "
                                 "--suite NAME as the prompt source")
            return
        if self.feature_dir:
            raise InputError(f"--feature-dir {self.feature_dir} caches the teacher features of stored answers "
                             "(offline training); --online recomputes them at every step by design: drop one of "
                             "the two")
        if (self.data is None) == (self.suite is None):
            raise InputError("--online needs exactly one prompt source: --data DIR (a gen-data output; its answers "
                             "are not read) or --suite NAME" + ("" if self.data is None else
                                                                f" (got --data {self.data} and --suite {self.suite})"))
        if self.data is not None and self.prompt_suffix:
            raise InputError("--prompt-suffix applies to --suite prompts; the prompts of --data carry the suffix "
                             "gen-data gave them")
        if self.max_new_tokens < 1:
            raise InputError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")


def cache_dir() -> Path:
    """Where converted and built artefacts live: $VISPEC_BENCH_CACHE, default ~/.cache/vispec_bench."""
    return Path(os.environ.get("VISPEC_BENCH_CACHE", Path.home() / ".cache" / "vispec_bench"))


@dataclass(kw_only=True)
class BuildConfig(MachineSettings):
    """`testbed build`: the target is always the testbed, trained and distilled in float32."""

    work: str = setting("", "work directory (default $VISPEC_BENCH_CACHE/testbed-build/seed<seed>, "
                            "+ -<N>tok for N != 64 image tokens)")
    image_tokens: int = setting(64, "image tokens per image: 64 (64x64, patch 8; --model testbed), 576 (96x96, "
                                    "patch 4; --model testbed-576) or 256 (64x64, patch 4)")
    pretrain_steps: int = setting(300, "stage 1: vision-tower pretraining steps")
    pretrain_batch: int = setting(64, "stage 1 batch size")
    projector: str = setting("words", "stage 2's projector: words (each image position a mix of the colour or shape "
                                      "words' embeddings; fitted as probes first) or mlp (LLaVA's two-layer MLP)")
    vision_steps: int = setting(1000, "stage 2: vision alignment steps")
    vision_batch: int = setting(8, "stage 2 batch size")
    vision_lr: float = setting(1e-3, "stage 2 learning rate")
    vision_target: float = setting(0.93, "held-out first-token accuracy that ends stage 2 early")
    vision_train_tower: bool = setting(False, "stage 2 also trains the vision tower (default: only projector + "
                                              "LoRA)", flag="--train-tower")
    lora_words_steps: int = setting(300, "stage 2 first trains its LoRA this many steps on the train questions with "
                                       "the image told in words ('The image shows a red circle. <question>'), "
                                       "text only (for --projector words; not when the LoRA comes from --vision-init)")
    lora_rank: int = setting(8, "LoRA rank on the language model's projections in stage 2 (0 = frozen)")
    lora_targets: list[str] = setting(factory=lambda: ["q_proj", "v_proj"], metavar="P1,P2,...",
                                      help="the language model's projections stage 2 adapts with LoRA, of q_proj, "
                                           "k_proj, v_proj, o_proj (attention), gate_proj, up_proj, down_proj (MLP)")
    vision_balance: bool = setting(True, "stage 2 draws its short-answer questions with the groups open / yes-no "
                                         "shape / yes-no colour x yes / no taking turns (off: uniformly)",
                                   flag="--no-vision-balance")
    vision_init: str = setting("", "stage 2 starts from this testbed weights folder: its LoRA factors, and its "
                                   "tower + projector too when they have this build's image-token setting")
    vision_long_examples: int = setting(320, "long-answer targets written by the base SmolLM2 (0 = short only)")
    eval_every: int = setting(100, "stage 2 steps between evaluations")
    eval_questions: int = setting(256, "held-out questions per evaluation")
    data_samples: int = setting(512, "stage 3: easy-VQA prompts answered for draft training (+ a fifth as many "
                                     "text-only instructions)")
    data_max_new_tokens: int = setting(256, "stage 3 answer length cap")
    draft_vocab: int = setting(4096, "reduced draft vocabulary size")
    draft_steps: int = setting(1200, "stage 4: training steps of every draft, a first stage included (ViSpec: half "
                                     "as EAGLE-2 (stage 1), half as ViSpec)")
    install: bool = setting(True, "leave the package's weights alone (the results stay in the work directory)")

    # What a setting meant before it existed: a build_config.json written before `projector` and
    # `lora_words_steps` were settings was built with LLaVA's MLP and no told-in-words LoRA, not
    # with today's defaults.
    BEFORE_IT_EXISTED = {"projector": "mlp", "lora_words_steps": 0}

    @classmethod
    def from_stored(cls, stored: dict) -> "BuildConfig":
        """The config a work directory's build_config.json records (keys it lacks: what they meant then)."""
        known = {k: v for k, v in stored.items() if k in cls.__dataclass_fields__}
        return cls(**{**{k: v for k, v in cls.BEFORE_IT_EXISTED.items() if k not in known}, **known})

    def work_dir(self) -> Path:
        if self.work:
            return Path(self.work)
        suffix = "" if self.image_tokens == 64 else f"-{self.image_tokens}tok"
        return cache_dir() / "testbed-build" / f"seed{self.seed}{suffix}"
