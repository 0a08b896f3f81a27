"""Stage 5 of the testbed build: the bf16 weights and drafts into the package, with provenance.json
(how they were made: command, settings, environment, every stage's result and the build log)."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from vispec_bench.errors import InputError
from vispec_bench.models.testbed.build.common import SHIPPED_DRAFTS, stage_done, weights_of
from vispec_bench.models.testbed.model import shipped_weights_dir
from vispec_bench.running.config import BuildConfig


def install(config: BuildConfig, work: Path, device: str, command: str, target: Path | None = None,
            partial: bool = False) -> Path:
    """bf16 weights into the package (vispec_bench/models/testbed/weights, or weights-<N> for N image
    tokens) with how they were made. `partial`: install the vision side and whichever drafts are done
    (provenance.json lists the missing ones), so a build too long for one sitting can end in a
    commit and continue later from it with --vision-init; without it a missing draft is an error."""
    import shutil

    import transformers

    from vispec_bench.drafts.checkpoints import load_draft, save_draft
    from vispec_bench.running.environment import capture

    target = target if target is not None else shipped_weights_dir(config.image_tokens)
    if not stage_done(work, "vision"):
        raise InputError(f"{work} has not finished stage 2 (vision): nothing to install")
    missing = [name for name in SHIPPED_DRAFTS if not stage_done(work, f"draft-{name}")]
    if missing and not partial:
        raise InputError(f"{work} has not trained the draft(s) {', '.join(missing)}; finish the build, or "
                         "install the vision side and the finished drafts on purpose (partial)")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy(weights_of(work) / "vision.safetensors", staging / "vision.safetensors")
    for name in (name for name in SHIPPED_DRAFTS if name not in missing):
        checkpoint = load_draft(work / "drafts" / name)
        save_draft(staging / "drafts" / name, checkpoint.state_dict, checkpoint.config, dtype=torch.bfloat16)
    stages = {path.name.removesuffix(".done.json"): json.loads(path.read_text())
              for path in sorted(work.glob("*.done.json"))}
    # Stage-level lines of the build log (not per-step ones): they show every resume and
    # eval, so a build made in several runs says so next to its weights.
    log_path = work / "build_log.jsonl"
    history = [entry for entry in map(json.loads, log_path.read_text().splitlines() if log_path.exists() else [])
               if "message" not in entry]
    provenance = {"command": command, "build_config": asdict(config), "device": device,
                  "environment": capture(device), "torch": torch.__version__,
                  "transformers": transformers.__version__, "python": platform.python_version(),
                  "stages": stages, "missing_drafts": missing, "history": history, "installed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "total_seconds": round(sum(s.get("seconds", 0) for s in stages.values()), 1),
                  "bytes": {str(p.relative_to(staging)): p.stat().st_size
                            for p in sorted(staging.rglob("*")) if p.is_file()}}
    # A build whose stage 2 started from installed weights (--vision-init) keeps how those were made:
    # read before the target is replaced, as the init is often the folder being installed over.
    init_provenance = Path(config.vision_init) / "provenance.json" if config.vision_init else None
    if init_provenance is not None and init_provenance.exists():
        provenance["vision_init_provenance"] = json.loads(init_provenance.read_text())
    (staging / "provenance.json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target

