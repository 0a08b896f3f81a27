"""What every stage of the testbed build shares: the work directory's log and done markers, and
the testbed loaded from the work directory's weights (passed as an argument, never through the
environment)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path


from vispec_bench.results.records import append_jsonl

TRAINABLE = ("model.vision_tower.", "model.multi_modal_projector.")  # the parameters the build trains and ships


@dataclass(frozen=True)
class DraftStage:
    """One draft the build trains: WORK/drafts/<name>, by `train --method <method>`, for
    share * draft_steps steps, starting from the draft of stage `init` when it names one."""

    name: str
    method: str  # a registry name; an ablation entry trains with its preset options
    init: str = ""
    share: float = 1.0
    ships: bool = True  # installed into the package (a first stage is only a starting point)


# Equal compute: every shipped draft has trained draft_steps steps in total on the same data. A
# two-stage method counts its first stage: ViSpec (and its two ablations, each trained with its
# component off) starts from an EAGLE-2 draft trained half the steps (the paper's stage 1, a
# text-style draft) and trains the other half; SpecVLM starts from a half-trained EagleVLM (its
# compressor and gate are new, its draft layer is EagleVLM's). In training order.
DRAFT_STAGES = (
    DraftStage("medusa", "medusa"),
    DraftStage("eagle2", "eagle2"),
    DraftStage("vispec-stage1", "eagle2", share=0.5, ships=False),
    DraftStage("vispec", "vispec", init="vispec-stage1", share=0.5),
    DraftStage("vispec-noadaptor", "vispec-noadaptor", init="vispec-stage1", share=0.5),
    DraftStage("vispec-noglobal", "vispec-noglobal", init="vispec-stage1", share=0.5),
    DraftStage("eaglevlm", "eaglevlm"),
    DraftStage("specvlm-stage1", "eaglevlm", share=0.5, ships=False),
    DraftStage("specvlm", "specvlm", init="specvlm-stage1", share=0.5),
    DraftStage("eagle3", "eagle3"),
)
SHIPPED_DRAFTS = tuple(stage.name for stage in DRAFT_STAGES if stage.ships)
# The option that sizes each method's reduced draft vocabulary (EAGLE-3's is its own lm_head's rows).
VOCAB_OPTION = {"eagle3": "draft_vocab_size"}


class StageLog:
    """One JSON line per event in WORK/build_log.jsonl, echoed to stderr."""

    def __init__(self, work: Path):
        self.path = work / "build_log.jsonl"

    def __call__(self, **entry) -> None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **entry}
        append_jsonl(self.path, entry)
        print(" ".join(f"{k}={v}" for k, v in entry.items()), file=sys.stderr, flush=True)


def stage_done(work: Path, stage: str) -> dict | None:
    """What a finished stage recorded, or None while it has not finished."""
    marker = work / f"{stage}.done.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def mark_stage_done(work: Path, stage: str, info: dict) -> None:
    (work / f"{stage}.done.json").write_text(json.dumps(info, indent=2) + "\n")


def weights_of(work: Path) -> Path:
    """The work directory's testbed weights (vision.safetensors; later stages load the target from here)."""
    return work / "weights"
