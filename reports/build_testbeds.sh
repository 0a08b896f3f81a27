#!/usr/bin/env bash
# Build the testbed's two image-token settings (issue 17: testbed v2) from their seeds, resumably:
# re-running continues where a stage stopped, finished stages are skipped. Hours on a 2-core CPU
# (reports/build_cost.py measures a step of each stage per setting), minutes on a GPU (DEVICE=cuda).
#
#   reports/build_testbeds.sh 64       # --model testbed: the shipped tower under the words projector,
#                                      # LoRA told in words first, then the drafts (run it first)
#   reports/build_testbeds.sh 576      # --model testbed-576: its own tower (pretrained from scratch),
#                                      # projector and drafts; LoRA factors start from the 64 build's
#   reports/build_testbeds.sh install  # both work directories' weights into the package
#   reports/build_testbeds.sh install 64   # one setting's (the other may still be building)
#   reports/build_testbeds.sh install-partial 576  # its vision side + finished drafts, to commit a
#                                      # build that will not finish in one sitting (then continue it
#                                      # with --pretrain-steps 0 --vision-init <that folder> --vision-steps 0)
#   INSTALL_TO=DIR reports/build_testbeds.sh install-partial 576  # the same into DIR, leaving the
#                                      # shipped folder as it is (one setting)
#
# Work directories: $WORK/build<N> (default /work/build<N>). Run it alone: stage times are recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/work}
DEVICE=${DEVICE:-cpu}
COMMON=(--device "$DEVICE" --seed 0 --no-install)

build_64() {
  # The words projector (model.WordProjector): the shipped tower (--vision-init, same setting; its MLP
  # projector and the LoRA that read it are not taken), the LoRA first trained 300 steps on the questions
  # told in words, the projector's read-outs fitted as probes, then 150 image steps, best of every 50 kept
  # (--vision-target 1: no early stop). Measured 2026-12-05: 93.8 % at step 100 on 256 test questions
  # (README); LLaVA's MLP projector stayed near 87 % whatever we tried.
  python -m vispec_bench testbed build --image-tokens 64 --work "$WORK/build64" "${COMMON[@]}" \
    --projector words --lora-words-steps 300 --pretrain-steps 0 --vision-init vispec_bench/models/testbed/weights \
    --vision-steps 150 --eval-every 50 --vision-target 1
}

build_576() {
  # Its own tower, pretrained from scratch (stage 1); the LoRA from the 64 build (same projector kind: it
  # already reads word-images, so no told-in-words steps), the read-outs fitted on this tower. A 576 stage-2 step costs 19-50 s on
  # 2 cores (19 on the 2026-12-06 machine, 39-50 on the one before): 100 steps, evaluated every 25 on 128 questions, stopping at 97 % (50 steps reached 86.8 % on
  # item 5's 500 questions, 2026-12-05; a second 50 from there 90.6 % on the 128: README "Built so far").
  python -m vispec_bench testbed build --image-tokens 576 --work "$WORK/build576" "${COMMON[@]}" \
    --projector words --lora-words-steps 0 --pretrain-steps 300 --pretrain-batch 32 \
    --vision-init vispec_bench/models/testbed/weights --vision-steps 100 --eval-every 25 --eval-questions 128 --vision-target 0.97
}

install_settings() {  # install_settings PARTIAL N...: these settings' work directories into the package
  python - "$WORK" "$@" <<'PY'
import json, os, sys
from pathlib import Path

from vispec_bench.models.testbed.build import install
from vispec_bench.running.config import BuildConfig

partial, settings, to = sys.argv[2] == "partial", list(map(int, sys.argv[3:])), os.environ.get("INSTALL_TO")
if to and len(settings) != 1:
    sys.exit("INSTALL_TO names one folder: give one setting")
for tokens in settings:
    work = Path(sys.argv[1]) / f"build{tokens}"
    stored = json.loads((work / "build_config.json").read_text())
    config = BuildConfig.from_stored(stored)
    print(install(config, work, config.device, f"reports/build_testbeds.sh {tokens}", partial=partial,
                  target=Path(to) if to else None))
PY
}

case "${1:-}" in
  576) build_576 ;;
  64) build_64 ;;
  install) shift; [ $# -gt 0 ] || set -- 576 64; install_settings complete "$@" ;;
  install-partial) shift; [ $# -gt 0 ] || { echo "install-partial needs a setting (576 or 64)" >&2; exit 2; }
    install_settings partial "$@" ;;
  *) echo "usage: $0 576|64|install [N]|install-partial N" >&2; exit 2 ;;
esac
