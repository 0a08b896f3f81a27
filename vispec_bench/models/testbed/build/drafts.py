"""Stage 4 of the testbed build: the Medusa, EAGLE-2, ViSpec, EagleVLM, SpecVLM and EAGLE-3 drafts, trained
with `train` on the stage-3 data against the testbed of WORK/weights, each with a reduced draft
vocabulary (a second-stage method takes its first stage's)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from vispec_bench.models.testbed.build.common import DRAFT_METHODS, SECOND_STAGE, VOCAB_OPTION, StageLog, mark_stage_done, stage_done, weights_of
from vispec_bench.models.testbed.model import testbed_loader
from vispec_bench.running.config import BuildConfig


def train_drafts(config: BuildConfig, work: Path, device: str, log: StageLog) -> None:
    """Each draft not yet done: train it (resuming its checkpoint if one was started), then mark it done."""
    from vispec_bench.drafts.training import TrainConfig, train

    for method in DRAFT_METHODS:
        if stage_done(work, f"draft-{method}"):
            continue
        started = time.time()
        out = work / "drafts" / method
        first_stage = SECOND_STAGE.get(method)
        init = str(work / "drafts" / first_stage) if first_stage else None
        steps = config.draft_steps // 2 if first_stage else config.draft_steps
        train_config = TrainConfig(method=method, model="testbed", data=str(work / "data"), out=str(out), steps=steps,
                                   lr=1e-3, eval_every=max(50, steps // 6), save_every=100, seed=config.seed,
                                   dtype="float32", device=device, init=init,
                                   method_args=[f"{method}.{VOCAB_OPTION.get(method, 'vocab')}={config.draft_vocab}"],
                                   resume=(out / "trainer_state.pt").exists())
        train(train_config, log=lambda message: log(stage=f"draft-{method}", message=message),
              model_loader=testbed_loader(weights_of(work)))
        accuracy = json.loads((out / "draft_config.json").read_text())["training"]["eval_accuracy"]
        mark_stage_done(work, f"draft-{method}", {"steps": steps, "eval_accuracy": accuracy,
                                                  "seconds": round(time.time() - started, 1)})
