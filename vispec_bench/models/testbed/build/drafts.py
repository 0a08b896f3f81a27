"""Stage 4 of the testbed build: the drafts of DRAFT_STAGES (Medusa, EAGLE-2, ViSpec and its two
ablations, EagleVLM, SpecVLM, EAGLE-3, and the first stages two of them start from), trained with
`train` on the stage-3 data against the testbed of WORK/weights for equal total steps, each with
a reduced draft vocabulary (a second stage keeps its first stage's)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from vispec_bench.models.testbed.build.common import DRAFT_STAGES, VOCAB_OPTION, StageLog, mark_stage_done, stage_done, weights_of
from vispec_bench.models.testbed.model import testbed_loader
from vispec_bench.running.config import BuildConfig


def train_drafts(config: BuildConfig, work: Path, device: str, log: StageLog) -> None:
    """Each draft not yet done: train it (resuming its checkpoint if one was started), then mark it done."""
    from vispec_bench.drafts.training import STATE, TrainConfig, train

    for stage in DRAFT_STAGES:
        if stage_done(work, f"draft-{stage.name}"):
            continue
        started = time.time()
        out = work / "drafts" / stage.name
        earlier = seconds_before_resume(out / STATE)
        steps = max(1, round(config.draft_steps * stage.share))
        option = VOCAB_OPTION.get(stage.method, "vocab")
        train_config = TrainConfig(method=stage.method, model="testbed", data=str(work / "data"), out=str(out),
                                   steps=steps, lr=1e-3, eval_every=max(50, steps // 6), save_every=100,
                                   seed=config.seed, dtype="float32", device=device,
                                   init=str(work / "drafts" / stage.init) if stage.init else None,
                                   method_args=[f"{stage.method}.{option}={config.draft_vocab}"],
                                   feature_dir=str(work / "features"),
                                   resume=(out / STATE).exists())
        train(train_config, log=lambda message, name=stage.name: log(stage=f"draft-{name}", message=message),
              model_loader=testbed_loader(weights_of(work)))
        accuracy = json.loads((out / "draft_config.json").read_text())["training"]["eval_accuracy"]
        prior = stage_done(work, f"draft-{stage.init}") if stage.init else None
        mark_stage_done(work, f"draft-{stage.name}", {
            "method": stage.method, "steps": steps, "init": stage.init or None,
            "total_steps": steps + (prior["total_steps"] if prior else 0),
            "eval_accuracy": accuracy, "seconds": round(earlier + time.time() - started, 1),
            **({"seconds_before_resume": earlier} if earlier else {})})


def seconds_before_resume(state_path: Path) -> float:
    """The training seconds an interrupted draft stage had checkpointed (0 for a fresh one), so a
    stage built over several sittings records its whole time, not its last sitting's."""
    if not state_path.exists():
        return 0.0
    from vispec_bench.drafts.resume_state import load_state

    return float(load_state(state_path, required=("step",)).get("train_seconds", 0.0))
