#!/usr/bin/env bash
# Did a change make the engine slower? Runs the same benchmark with two commits, alternating
# (A, B, A, B ...) so that machine drift hits both alike, and prints each run's decode throughput
# per method (decode tokens / decode seconds, from the records). Run it alone on a quiet machine,
# with the environment that runs the benchmark active (its python has torch).
#
#   reports/ab_commits.sh OLD_COMMIT [NEW_COMMIT (default HEAD)] [ROUNDS (default 2)]
#
# Each commit is checked out into a temporary worktree and run from there (python -m puts the
# worktree first on sys.path). Default benchmark: .ci/run's testbed gate configuration with Medusa
# and EAGLE-2 (drafts both commits ship); override with ARGS="...".
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1; NEW=${2:-HEAD}; ROUNDS=${3:-2}
WORK=${WORK:-/tmp/vispec-ab}
read -r -a ARGS <<< "${ARGS:---model testbed --methods medusa,eagle2 --suite easyvqa --prompt-mode long --limit 3 --max-new-tokens 64 --dtype float32 --device cpu --repeats 2 --no-profile --no-progress}"
rm -rf "$WORK"; mkdir -p "$WORK"
git worktree add -q --detach "$WORK/a" "$OLD"; git worktree add -q --detach "$WORK/b" "$NEW"
trap 'git worktree remove --force "$WORK/a"; git worktree remove --force "$WORK/b"' EXIT
for i in $(seq 1 "$ROUNDS"); do
  for side in a b; do
    (cd "$WORK/$side" && python -m vispec_bench run "${ARGS[@]}" --out "$WORK/runs" --run-id "$side-$i" > "$WORK/$side-$i.log" 2>&1)
  done
done
python - "$WORK/runs" <<'PY'
import collections, json, pathlib, sys
for run in sorted(pathlib.Path(sys.argv[1]).iterdir()):
    totals = collections.defaultdict(lambda: [0, 0.0])
    for line in (run / "records.jsonl").read_text().splitlines():
        record = json.loads(line)
        totals[record["method"]][0] += record["num_new_tokens"] - 1
        totals[record["method"]][1] += record["decode_s"]
    print(run.name, "decode tok/s:", {m: round(t / s, 1) for m, (t, s) in totals.items()})
PY
