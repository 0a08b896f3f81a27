#!/usr/bin/env bash
# Re-run and regenerate the committed reports (and the CI baseline) on a quiet machine. Each report
# then keeps its runs: reports/<name>/runs/<run_id>/{manifest.json,records.jsonl.gz}, from which
# `python -m vispec_bench report reports/<name>/runs --out reports/<name>` re-derives every figure
# (tests/test_committed_reports.py checks that it does).
#
#   reports/regenerate.sh all                 # everything below, in this order
#   reports/regenerate.sh testbed-cpu         # the testbed report (default run, long run, accuracy run)
#   reports/regenerate.sh tiny-llava-drafts   # train the tiny-llava drafts, then their runs
#   reports/regenerate.sh sample-tiny-llava   # needs the drafts of tiny-llava-drafts ($WORK/rd)
#   reports/regenerate.sh baseline            # reports/baseline.json from 5 repeats of the CI gate runs
#   reports/regenerate.sh engines-cpu         # eager / static / compiled, float32 and bfloat16, + roofline
#   reports/regenerate.sh ngram-vs-hf         # our ngram against HF's prompt lookup, same process
#   reports/regenerate.sh specvlm-cpu         # eaglevlm and specvlm against ngram, eagle2 and vispec
#   reports/regenerate.sh eagle3-cpu          # eagle3 (training-time test) against eagle2 and vispec
#   reports/regenerate.sh image-tokens-cpu    # every method at 64 and 576 image tokens per image, >= 100
#                                             # long answers each + 500 short questions (hours on a CPU;
#                                             # resumable: re-running continues its runs; not in `all`)
#   reports/regenerate.sh training-scaling    # online-trained EAGLE-family drafts: tau per epoch (not in
#                                             # `all`: an hour on a CPU; needs `testbed build`'s data)
#
# Runs and drafts go to $WORK (default /tmp/vispec-regenerate). Timings are only meaningful on a
# machine doing nothing else: run it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/vispec-regenerate}
mkdir -p "$WORK"
CPU=(--dtype float32 --device cpu --no-progress)

fresh() {  # a new set of runs replaces the report's old ones
  rm -rf "$WORK/$1" "reports/$1/runs"
  mkdir -p "$WORK/$1"
}

testbed_cpu() {
  fresh testbed-cpu
  # the default benchmark, exactly as the README's first command runs it
  python -m vispec_bench run --no-progress --out "$WORK/testbed-cpu" --run-id default
  python -m vispec_bench run --model testbed --methods medusa,eagle2,vispec --prompt-mode long --limit 12 \
    --max-new-tokens 256 "${CPU[@]}" --out "$WORK/testbed-cpu" --run-id testbed-long-12
  python -m vispec_bench run --model testbed --methods ar --prompt-mode short --limit 200 --max-new-tokens 8 \
    "${CPU[@]}" --no-profile --out "$WORK/testbed-cpu" --run-id testbed-short-200
  python -m vispec_bench report "$WORK/testbed-cpu" --out reports/testbed-cpu
}

tiny_llava_drafts() {
  fresh tiny-llava-drafts
  local rd="$WORK/rd"
  rm -rf "$rd"
  python -m vispec_bench gen-data --model tiny-llava --limit 60 --max-new-tokens 48 --dtype float32 --device cpu \
    --out "$rd/data" --no-progress
  for method in eagle2 medusa; do
    python -m vispec_bench train --method $method --model tiny-llava --data "$rd/data" --out "$rd/$method" \
      --steps 300 --lr 3e-3 --eval-every 50 --device cpu --no-progress
  done
  python -m vispec_bench train --method vispec --model tiny-llava --data "$rd/data" --out "$rd/vispec" \
    --init "$rd/eagle2" --steps 300 --lr 3e-3 --eval-every 50 --device cpu --no-progress
  local out="$WORK/tiny-llava-drafts"
  python -m vispec_bench run --model tiny-llava --methods eagle2,medusa \
    --method-args eagle2.draft="$rd/eagle2" medusa.draft="$rd/medusa" --limit 8 --max-new-tokens 48 "${CPU[@]}" \
    --out "$out" --run-id trained
  python -m vispec_bench run --model tiny-llava --methods eagle2,medusa \
    --method-args eagle2.draft=random medusa.draft=random --limit 8 --max-new-tokens 48 "${CPU[@]}" \
    --out "$out" --run-id random
  python -m vispec_bench run --model tiny-llava --methods eagle2,vispec \
    --method-args eagle2.draft="$rd/eagle2" vispec.draft="$rd/vispec" --limit 8 --max-new-tokens 48 "${CPU[@]}" \
    --out "$out" --run-id vis
  python -m vispec_bench report "$out" --out reports/tiny-llava-drafts
  cp "$rd/eagle2/train_log.jsonl" reports/tiny-llava-drafts/eagle2_train_log.jsonl
  cp "$rd/medusa/train_log.jsonl" reports/tiny-llava-drafts/medusa_train_log.jsonl
  cp "$rd/vispec/train_log.jsonl" reports/tiny-llava-drafts/vispec_stage2_train_log.jsonl
  for run in trained random vis; do cp "$out/$run/summary.json" "reports/tiny-llava-drafts/summary_$run.json"; done
}

sample_tiny_llava() {
  local rd="$WORK/rd"
  [ -d "$rd/vispec" ] || { echo "no drafts in $rd: run '$0 tiny-llava-drafts' first" >&2; exit 1; }
  fresh sample-tiny-llava
  for suite in "easyvqa" "vqav2 --fixtures" "mmmu --fixtures"; do
    # shellcheck disable=SC2086  # "$suite" carries its --fixtures flag
    python -m vispec_bench run --model tiny-llava --methods eagle2,medusa,vispec \
      --method-args eagle2.draft="$rd/eagle2" medusa.draft="$rd/medusa" vispec.draft="$rd/vispec" \
      --suite $suite --limit 4 --max-new-tokens 48 --repeats 2 "${CPU[@]}" --out "$WORK/sample-tiny-llava"
  done
  python -m vispec_bench report "$WORK/sample-tiny-llava" --out reports/sample-tiny-llava
}

engines_cpu() {
  # AR and every method on each engine, interleaved per sample, float32 then bfloat16; then the
  # physical reference (AR ms/token against weight bytes / measured bandwidth) and a forward's profile.
  fresh engines-cpu
  # float32 also runs the profiling pass (harness share); bfloat16 only the timed decodes.
  for setting in "float32" "bfloat16 --no-profile"; do
    # shellcheck disable=SC2086  # "$setting" carries its flag
    python -m vispec_bench run --model testbed --methods ngram,medusa,eagle2,vispec --engines eager,static,compiled \
      --suite easyvqa --prompt-mode long --limit ${ENGINE_SAMPLES:-8} --max-new-tokens 64 --dtype $setting \
      --device cpu --no-progress --out "$WORK/engines-cpu" --run-id "engines-${setting%% *}"
  done
  python -m vispec_bench report "$WORK/engines-cpu" --out reports/engines-cpu
  python -m vispec_bench roofline --model testbed --dtypes float32,bfloat16 --engines eager,static,compiled \
    --device cpu --out reports/engines-cpu
}

ngram_vs_hf() {
  python reports/ngram_vs_hf.py --model testbed --limit ${NGRAM_SAMPLES:-10} --max-new-tokens 128
}

training_scaling() {
  # SpecVLM's training-time scaling: each EAGLE-family draft trained online (`train --online`: the
  # testbed answers the prompts of the build's stage-3 data during training, its stored answers
  # unread, nothing written) from scratch, with the testbed drafts' reduced vocabulary, a snapshot
  # at the end of epochs 1, 2, 4 and 8; then tau of every snapshot on easy-VQA test samples, with
  # the shipped offline draft of each method (same prompts, same steps per epoch) as a reference
  # line (reports/training_scaling.py). TESTBED_DATA: the data directory `testbed build` wrote.
  local work="$WORK/training-scaling" data=${TESTBED_DATA:-$HOME/.cache/vispec_bench/testbed-build/seed0/data}
  rm -rf "$work"
  mkdir -p "$work"
  local drafts=() references=()
  for method in ${SCALING_METHODS:-eaglevlm specvlm}; do
    python -m vispec_bench train --method $method --model testbed --online --data "$data" --max-new-tokens 256 \
      --epochs ${SCALING_EPOCHS:-8} --snapshot-epochs ${SCALING_SNAPSHOTS:-1,2,4,8} --method-args $method.vocab=4096 \
      --lr 1e-3 --eval-every 173 --save-every 173 --seed 0 --dtype float32 --device ${SCALING_DEVICE:-cpu} \
      --no-progress --out "$work/$method"
    drafts+=("$method=$work/$method")
    references+=("$method=vispec_bench/models/testbed/weights/drafts/$method")
  done
  rm -rf reports/training-scaling
  python reports/training_scaling.py --model testbed "${drafts[@]}" --reference "${references[@]}" \
    --samples ${SCALING_SAMPLES:-20} --max-new-tokens 128 --device ${SCALING_DEVICE:-cpu} --name training-scaling
}

specvlm_cpu() {
  # SpecVLM and EagleVLM against ngram, EAGLE-2 and ViSpec on the testbed (shipped drafts: EAGLE-2 and
  # EagleVLM 800 steps; ViSpec and SpecVLM 400 more from them; the same 192-row data), interleaved per sample.
  fresh specvlm-cpu
  python -m vispec_bench run --model testbed --methods ngram,eagle2,eaglevlm,vispec,specvlm --suite easyvqa \
    --prompt-mode long --limit ${SPECVLM_SAMPLES:-20} --max-new-tokens 128 "${CPU[@]}" --no-profile --out "$WORK/specvlm-cpu" \
    --run-id specvlm-methods
  python -m vispec_bench report "$WORK/specvlm-cpu" --out reports/specvlm-cpu
}

eagle3_cpu() {
  # The shipped drafts: EAGLE-3 800 steps (training-time test, 7 unrolled steps each), EAGLE-2 800,
  # ViSpec 400 more from EAGLE-2; the same 192 generated answers (testbed provenance.json).
  fresh eagle3-cpu
  python -m vispec_bench run --model testbed --methods eagle2,vispec,eagle3 --suite easyvqa \
    --prompt-mode long --limit ${EAGLE3_SAMPLES:-40} --max-new-tokens 128 "${CPU[@]}" --no-profile \
    --out "$WORK/eagle3-cpu" --run-id eagle3-methods
  python -m vispec_bench report "$WORK/eagle3-cpu" --out reports/eagle3-cpu
}

run_or_resume() {  # run_or_resume DIR RUN_ID ARGS...: continue an interrupted run instead of starting over
  local dir=$1 id=$2; shift 2
  if [ -f "$dir/$id/manifest.json" ]; then
    python -m vispec_bench run --resume "$dir/$id" --no-progress
  else
    python -m vispec_bench run "$@" --out "$dir" --run-id "$id"
  fi
}

image_tokens_cpu() {
  # The equal-compute drafts of each setting's build (testbed provenance.json / weights-576/provenance.json),
  # AR and every draft method interleaved per sample, on the same long-answer test questions.
  local out="$WORK/image-tokens-cpu" n=${IMAGE_TOKENS_SAMPLES:-100}
  local methods=medusa,eagle2,vispec,vispec-noadaptor,vispec-noglobal,eaglevlm,specvlm,eagle3
  mkdir -p "$out"
  rm -rf reports/image-tokens-cpu/runs
  # IMAGE_TOKENS_MODELS=testbed runs one setting (e.g. while the other is still building); the report
  # covers every run under $out
  for model in ${IMAGE_TOKENS_MODELS:-testbed testbed-576}; do
    run_or_resume "$out" "$model-long" --model $model --methods $methods --suite easyvqa --prompt-mode long \
      --limit "$n" --max-new-tokens 128 "${CPU[@]}" --no-profile
    run_or_resume "$out" "$model-short" --model $model --methods ar --suite easyvqa --prompt-mode short \
      --limit 500 --max-new-tokens 8 "${CPU[@]}" --no-profile
  done
  python -m vispec_bench report "$out" --out reports/image-tokens-cpu
}

baseline() {
  # The two gate runs of .ci/run with 5 repeats (a baseline measures its noise from >= 5).
  rm -rf "$WORK/ci"
  python -m vispec_bench run --model tiny-qwen25vl --methods oracle --suite easyvqa --limit 4 --max-new-tokens 32 \
    "${CPU[@]}" --repeats 5 --out "$WORK/ci" --run-id smoke
  python -m vispec_bench run --model testbed --methods medusa,eagle2,vispec --suite easyvqa --prompt-mode long \
    --limit 3 --max-new-tokens 64 "${CPU[@]}" --repeats 5 --out "$WORK/ci" --run-id testbed-gate
  rm -f reports/baseline.json
  python -m vispec_bench check "$WORK/ci/smoke" --baseline reports/baseline.json --write-baseline
  python -m vispec_bench check "$WORK/ci/testbed-gate" --baseline reports/baseline.json --write-baseline
}

case "${1:-all}" in
  testbed-cpu) testbed_cpu ;;
  tiny-llava-drafts) tiny_llava_drafts ;;
  sample-tiny-llava) sample_tiny_llava ;;
  baseline) baseline ;;
  engines-cpu) engines_cpu ;;
  ngram-vs-hf) ngram_vs_hf ;;
  specvlm-cpu) specvlm_cpu ;;
  eagle3-cpu) eagle3_cpu ;;
  image-tokens-cpu) image_tokens_cpu ;;
  training-scaling) training_scaling ;;
  all) testbed_cpu; tiny_llava_drafts; sample_tiny_llava; baseline; engines_cpu; ngram_vs_hf; specvlm_cpu; eagle3_cpu ;;
  *) echo "usage: $0 [all|testbed-cpu|tiny-llava-drafts|sample-tiny-llava|baseline|engines-cpu|ngram-vs-hf|specvlm-cpu|eagle3-cpu|image-tokens-cpu|training-scaling]" >&2
     exit 2 ;;
esac
