#!/usr/bin/env bash
# Measures (1) the false-alarm rate of the regression gate on A/A runs and (2) how many samples a
# claim "X is faster than Y" needs on the testbed. Run it alone on a quiet machine; it takes a while.
#
#   reports/aa_gate.sh                 # N=10 A/A checks, then the samples-needed run
#   N=20 reports/aa_gate.sh aa         # only the A/A part
#   reports/aa_gate.sh samples         # only the samples-needed part
#
# (1) A/A: a baseline is written from one 5-repeat run of .ci/run's testbed gate configuration;
# then the identical configuration runs N more times with 3 repeats, as CI runs it, and each is
# checked against that baseline with CI's thresholds. Nothing changed between the runs, so every
# exit 1 is a false alarm. The same runs are also checked with --max-speedup-drop 0, where only
# the baseline's 2-sigma noise rule decides: its false-alarm rate shows what the threshold buys.
# (2) samples: one run with many samples and 3 repeats; reports/samples_needed.py prints, for
# growing n, the 95 % interval of ViSpec's throughput over EAGLE-2's and over AR's, and the n at
# which a 5 % difference is resolved.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/vispec-aa}
N=${N:-10}
SAMPLES=${SAMPLES:-64}  # samples of the samples-needed run
GATE=(--model testbed --methods medusa,eagle2,vispec --suite easyvqa --prompt-mode long --limit 3
      --max-new-tokens 64 --dtype float32 --device cpu --no-progress --out "$WORK")

aa() {
  rm -rf "$WORK"; mkdir -p "$WORK"
  python -m vispec_bench run "${GATE[@]}" --repeats 5 --run-id aa-base
  python -m vispec_bench check "$WORK/aa-base" --baseline "$WORK/baseline.json" --write-baseline
  local alarms=0 noise_alarms=0
  for i in $(seq 1 "$N"); do
    python -m vispec_bench run "${GATE[@]}" --repeats 3 --run-id "aa-$i"
    python -m vispec_bench check "$WORK/aa-$i" --baseline "$WORK/baseline.json" --max-speedup-drop 0.25 \
      --max-tau-drop 0.02 --strict > "$WORK/aa-$i.check" && code=0 || code=$?
    [ "$code" -eq 1 ] && alarms=$((alarms + 1))
    [ "$code" -gt 1 ] && { cat "$WORK/aa-$i.check"; echo "check failed to run (exit $code)" >&2; exit "$code"; }
    python -m vispec_bench check "$WORK/aa-$i" --baseline "$WORK/baseline.json" --max-speedup-drop 0 \
      --max-tau-drop 0.02 --strict > "$WORK/aa-$i.noise-only.check" || noise_alarms=$((noise_alarms + 1))
  done
  echo "A/A false alarms with CI's thresholds (--max-speedup-drop 0.25): $alarms of $N runs"
  echo "A/A false alarms with the baseline-noise rule alone (--max-speedup-drop 0): $noise_alarms of $N runs"
  grep -h "speedup_decode" "$WORK"/aa-*.check | grep -v noise-only || true
}

samples() {
  rm -rf "$WORK/samples"; mkdir -p "$WORK/samples"
  python -m vispec_bench run --model testbed --methods eagle2,vispec --suite easyvqa --prompt-mode long --limit "$SAMPLES" \
    --max-new-tokens 128 --dtype float32 --device cpu --repeats 3 --no-profile --no-progress \
    --out "$WORK/samples" --run-id many
  PYTHONPATH=. python reports/samples_needed.py "$WORK/samples/many" vispec eagle2 --margin 0.05
  PYTHONPATH=. python reports/samples_needed.py "$WORK/samples/many" vispec ar --margin 0.05
}

case "${1:-all}" in
  aa) aa ;;
  samples) samples ;;
  all) aa; samples ;;
  *) echo "usage: $0 [all|aa|samples]" >&2; exit 2 ;;
esac
