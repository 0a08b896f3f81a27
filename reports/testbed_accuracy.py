"""Item 5's accuracy bars for a testbed weights folder (a build's WORK/weights before it is installed).

    PYTHONPATH=. python reports/testbed_accuracy.py WEIGHTS_DIR [--short 500] [--long 100] [--out DIR]

Runs AR alone, float32, greedy, exactly as `run --model testbed --methods ar --suite easyvqa` does
(the same fixed-seed sample choice) but with the testbed loaded from WEIGHTS_DIR:
short-answer accuracy on --short test questions (cap 8 tokens) and the share of --long long-answer
samples (cap 128) whose answer names the image's true shape or colour (the suite's extra score;
samples whose image has neither label known are left out). A finished run in --out is read again,
not rerun. The records stay under --out
(default a temporary directory), so the numbers can be checked.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def mean_score(run_dir: Path, long_answers: bool) -> tuple[float, int]:
    """Short: the suite's score (the answer matches). Long: the suite's extra score
    `names_shape_or_color` (the answer names the image's true shape or colour); a sample whose image
    has neither label known has no such score and is left out."""
    from vispec_bench.results.records import RunStore

    records = [r for r in RunStore(run_dir).records() if r["method"] == "ar"]  # a live run or a report's (gzip)
    if long_answers:
        scores = [r["extra_scores"]["names_shape_or_color"] for r in records
                  if "names_shape_or_color" in (r.get("extra_scores") or {})]
    else:
        scores = [r["score"] for r in records]
    return sum(scores) / len(scores), len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights_dir")
    parser.add_argument("--short", type=int, default=500)
    parser.add_argument("--long", type=int, default=100)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from vispec_bench.models.testbed.model import testbed_loader
    from vispec_bench.running.config import RunConfig
    from vispec_bench.running.runner import Runner

    out = Path(args.out or tempfile.mkdtemp(prefix="testbed-accuracy-"))
    for mode, limit, cap in (("short", args.short, 8), ("long", args.long, 128)):
        if not limit:
            continue
        run_dir = out / mode
        records = run_dir / "records.jsonl"
        if not (records.exists() and len(records.read_text().splitlines()) >= limit):
            config = RunConfig(model="testbed", methods=[], suite="easyvqa", prompt_mode=mode, limit=limit,
                               max_new_tokens=cap, dtype="float32", device="cpu", profile_rounds=False)
            run_dir = Runner(config, out_dir=out, run_id=mode, progress=True,
                             model_loader=testbed_loader(args.weights_dir)).run()
        score, n = mean_score(run_dir, long_answers=mode == "long")
        what = "short-answer accuracy" if mode == "short" else "long answers naming the true shape or colour"
        print(f"{what}: {score:.1%} ({n} test questions; records: {run_dir})", flush=True)


if __name__ == "__main__":
    main()
