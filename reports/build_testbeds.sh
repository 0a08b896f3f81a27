#!/usr/bin/env bash
# Build the testbed's two image-token settings (issue 17: testbed v2) from their seeds, resumably:
# re-running continues where a stage stopped, finished stages are skipped. Hours on a 2-core CPU
# (reports/build_cost.py measures a step of each stage per setting), minutes on a GPU (DEVICE=cuda).
#
#   reports/build_testbeds.sh 576      # --model testbed-576: its own tower (pretrained from scratch),
#                                      # projector and drafts; LoRA factors start from the 64 build's
#   reports/build_testbeds.sh 64       # --model testbed: stage 2 continues the shipped tower, projector
#                                      # and LoRA with the balanced question draw, then the drafts
#   reports/build_testbeds.sh install  # both work directories' weights into the package
#   reports/build_testbeds.sh install 64   # one setting's (the other may still be building)
#   reports/build_testbeds.sh install-partial 576  # its vision side + finished drafts, to commit a
#                                      # build that will not finish in one sitting (then continue it
#                                      # with --pretrain-steps 0 --vision-init <that folder> --vision-steps 0)
#
# Work directories: $WORK/build<N> (default /work/build<N>). Run it alone: stage times are recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/work}
DEVICE=${DEVICE:-cpu}
COMMON=(--device "$DEVICE" --seed 0 --no-install)

build_576() {
  # --vision-steps 100: the first 576 build (lost with its machine) scored 82.0 % at step 100, 83.6 % at 150, 82.8 % at 200 of 200;
  # a real stage-2 step measured 39-50 s alone on the 2 cores (LoRA, 2 long-answer examples per batch of 8;
  # build_cost.py's synthetic step without them: 17-30 s), so 100 steps (77 min measured) leave the data and draft
  # stages time in the same sitting; 1.6 points on 128 questions is two answers.
  python -m vispec_bench testbed build --image-tokens 576 --work "$WORK/build576" "${COMMON[@]}" \
    --pretrain-steps 300 --pretrain-batch 32 \
    --vision-init vispec_bench/models/testbed/weights --vision-steps 100 --eval-every 50 --eval-questions 128
}

build_64() {
  # --pretrain-steps 0 --vision-steps 0: the tower, projector and LoRA are the shipped ones (--vision-init,
  # same setting; evaluated at step 0). Continuing stage 2 for 300 steps with the balanced question draw
  # (--vision-steps 300 --eval-every 50) measured no gain (87.5 % at step 0, best 87.5 % after), so the
  # build spends its time on the data and the drafts.
  python -m vispec_bench testbed build --image-tokens 64 --work "$WORK/build64" "${COMMON[@]}" \
    --pretrain-steps 0 --vision-init vispec_bench/models/testbed/weights --vision-steps 0
}

install_settings() {  # install_settings PARTIAL N...: these settings' work directories into the package
  python - "$WORK" "$@" <<'PY'
import json, sys
from pathlib import Path

from vispec_bench.models.testbed.build import install
from vispec_bench.running.config import BuildConfig

partial = sys.argv[2] == "partial"
for tokens in map(int, sys.argv[3:]):
    work = Path(sys.argv[1]) / f"build{tokens}"
    stored = json.loads((work / "build_config.json").read_text())
    config = BuildConfig(**{k: v for k, v in stored.items() if k in BuildConfig.__dataclass_fields__})
    print(install(config, work, config.device, f"reports/build_testbeds.sh {tokens}", partial=partial))
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
