"""What every stage of the testbed build shares: the work directory's log and done markers, and
the testbed loaded from the work directory's weights (passed as an argument, never through the
environment)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


from vispec_bench.results.records import append_jsonl

TRAINABLE = ("model.vision_tower.", "model.multi_modal_projector.")  # the parameters the build trains and ships
# In training order: a method in SECOND_STAGE starts from the draft of the method it names and
# trains half the steps (ViSpec from EAGLE-2, its paper's stage 2; SpecVLM from EagleVLM: its
# compressor and gate are new, its draft layer is EagleVLM's), so each pair totals the same steps.
DRAFT_METHODS = ("medusa", "eagle2", "vispec", "eaglevlm", "specvlm", "eagle3")
SECOND_STAGE = {"vispec": "eagle2", "specvlm": "eaglevlm"}
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
