"""The stage runner of the testbed build: runs the stages in order under one work directory,
skips the finished ones (each writes WORK/<stage>.done.json) and refuses to reuse a finished stage
under settings that would have changed it."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from vispec_bench.errors import InputError
from vispec_bench.models.testbed.build.common import DRAFT_STAGES, TRAINABLE, StageLog, mark_stage_done, stage_done, weights_of
from vispec_bench.models.testbed.build.data import generate_draft_data
from vispec_bench.models.testbed.build.drafts import train_drafts
from vispec_bench.models.testbed.build.install import install
from vispec_bench.models.testbed.build.pretrain import pretrain_tower
from vispec_bench.models.testbed.build.vision import check_lora_targets, save_vision_weights, train_vision
from vispec_bench.running.config import BuildConfig

STAGE_SETTINGS = {"pretrain": ("seed", "image_tokens", "pretrain_steps", "pretrain_batch"),
                  "vision": ("projector", "vision_steps", "vision_batch", "vision_lr", "vision_target", "vision_train_tower",
                             "lora_rank", "lora_targets", "lora_words_steps", "vision_balance", "vision_init", "vision_long_examples", "eval_every", "eval_questions"),
                  "data": ("data_samples", "data_max_new_tokens"),
                  **{f"draft-{stage.name}": ("draft_vocab", "draft_steps") for stage in DRAFT_STAGES}}


def check_settings(config: BuildConfig, work: Path) -> None:
    """A finished stage must not be reused under settings that would have changed it."""
    path = work / "build_config.json"
    settings = asdict(config)
    if path.exists():
        stored = json.loads(path.read_text())
        then = asdict(BuildConfig.from_stored(stored))  # a setting added after the build started: its meaning then
        changed = {k for k in settings if k not in ("install", "device", "work") and then[k] != settings[k]}
        clashes = sorted(k for stage, keys in STAGE_SETTINGS.items() if stage_done(work, stage)
                         for k in keys if k in changed)
        if clashes:
            raise InputError(f"{work} holds finished stages built with other settings ({', '.join(clashes)}: "
                             f"{ {k: stored.get(k) for k in clashes} }); pass another --work or delete it to start over")
    path.write_text(json.dumps(settings, indent=2) + "\n")


def build(config: BuildConfig, command: str = "") -> Path:
    """Run every unfinished stage (and install when config.install); returns the work directory."""
    from vispec_bench.models.loading import resolve_device
    from vispec_bench.models.testbed.model import PROJECTORS, build_untrained_testbed

    device = resolve_device(config.device)
    work = config.work_dir()
    check_lora_targets(config.lora_targets)  # a bad name fails now, not after an hour of pretraining
    if config.projector not in PROJECTORS:
        raise InputError(f"--projector: no projector named {config.projector!r}; choose from {', '.join(PROJECTORS)}")
    work.mkdir(parents=True, exist_ok=True)
    check_settings(config, work)
    log = StageLog(work)
    torch.manual_seed(config.seed)
    weights = weights_of(work)  # later stages load the testbed from here (passed to them, not through os.environ)

    if not (weights / "vision.safetensors").exists():
        started = time.time()
        model, processor = build_untrained_testbed(dtype=torch.float32, device=device, seed=config.seed,
                                                   image_tokens=config.image_tokens, projector=config.projector)
        info = stage_done(work, "pretrain")
        if info is None:
            info = pretrain_tower(model, processor, config, work, device, log)
            torch.save({k: v.cpu() for k, v in model.state_dict().items() if k.startswith(TRAINABLE)},
                       work / "pretrain_weights.pt")
            mark_stage_done(work, "pretrain", {**info, "seconds": round(time.time() - started, 1)})
            started = time.time()  # stage 2's clock starts here: its seconds must not count stage 1's again
        elif not (work / "vision_state.pt").exists():
            model.load_state_dict(torch.load(work / "pretrain_weights.pt", weights_only=True), strict=False)
        result, lora_factors = train_vision(model, processor, config, work, device, log)
        save_vision_weights(model, lora_factors, weights / "vision.safetensors")
        mark_stage_done(work, "vision", {**result, "seconds": round(time.time() - started, 1)})
        del model
    if stage_done(work, "data") is None:
        started = time.time()
        info = generate_draft_data(config, work, device)
        mark_stage_done(work, "data", {**info, "seconds": round(time.time() - started, 1)})
        log(stage="data", **info)
    train_drafts(config, work, device, log)
    if config.install:
        installed = install(config, work, device, command)
        log(stage="install", directory=str(installed))
    return work
