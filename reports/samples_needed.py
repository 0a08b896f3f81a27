"""How many samples does a claim "X is faster than Y" need? Measured from one run holding both.

    PYTHONPATH=. python reports/samples_needed.py RUN_DIR X Y [--margin 0.05]

X and Y are compared on the same samples and repeats of the run (paired): the figure is the
per-token decode throughput ratio (Σ tokens_X / Σ t_X) / (Σ tokens_Y / Σ t_Y), with its 95 %
bootstrap interval over samples (the run's repeats of a sample stay together) for the first n
samples, n = 4, 8, 16, ... up to all of them. A claim holds at n when the interval excludes 1.
The half-width shrinks as 1/√n, so the last row extrapolates the n at which the interval's
half-width falls below --margin (the smallest relative difference the claim should resolve).
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict

import numpy as np

from vispec_bench.results.records import RunStore
from vispec_bench.results.uncertainty import throughput_ratio_ci


def paired_per_sample(records: list[dict], x: str, y: str) -> tuple[list[str], np.ndarray]:
    """[n, 4] per-sample sums (tokens_x, t_x, tokens_y, t_y) over the repeats both methods finished."""
    by_key = {(r["method"], r["sample_id"], r.get("repeat", 0)): r for r in records}
    sums: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(4))
    for (method, sample, repeat), rx in by_key.items():
        ry = by_key.get((y, sample, repeat))
        if method == x and ry is not None:
            sums[sample] += [rx["num_new_tokens"] - 1, rx["decode_s"], ry["num_new_tokens"] - 1, ry["decode_s"]]
    samples = sorted(sums)
    return samples, np.array([sums[s] for s in samples])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("x")
    parser.add_argument("y", help="the method X is claimed faster than (ar for a speedup claim)")
    parser.add_argument("--margin", type=float, default=0.05, help="relative difference to resolve, e.g. 0.05")
    args = parser.parse_args()
    samples, data = paired_per_sample(RunStore(args.run_dir).records(), args.x, args.y)
    if len(samples) < 4:
        raise SystemExit(f"{args.run_dir}: only {len(samples)} samples where both {args.x} and {args.y} finished")
    print(f"{args.x} vs {args.y} in {args.run_dir}: per-token decode throughput ratio, 95 % bootstrap interval")
    print(f"{'n':>5}  {'ratio':>7}  {'interval':>17}  {'half-width':>10}  claim holds")
    sizes = sorted({min(len(samples), 2 ** k) for k in range(2, 20)})
    half = None
    for n in sizes:
        part = data[:n]
        ratio = (part[:, 0].sum() / part[:, 1].sum()) / (part[:, 2].sum() / part[:, 3].sum())
        low, high = throughput_ratio_ci(part[:, 0], part[:, 1], part[:, 2], part[:, 3])
        half = (high - low) / 2 / ratio
        holds = "yes" if low > 1 or high < 1 else "no"
        print(f"{n:>5}  {ratio:>7.3f}  [{low:.3f}, {high:.3f}]  {half:>9.1%}  {holds}")
    needed = math.ceil(len(samples) * (half / args.margin) ** 2)
    print(f"\nto resolve a {args.margin:.0%} difference (half-width < {args.margin:.0%}): about {needed} samples "
          f"(extrapolated as 1/sqrt(n) from n = {len(samples)})")


if __name__ == "__main__":
    main()
