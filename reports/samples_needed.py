"""How many samples does a claim "X is faster than Y" need? Measured from one run holding both.

    PYTHONPATH=. python reports/samples_needed.py RUN_DIR X Y [--margin 0.05] [--engine eager]

X and Y are compared on the same samples and repeats of the run (paired): the figure is the
per-token decode throughput ratio (Σ tokens_X / Σ t_X) / (Σ tokens_Y / Σ t_Y), with its 95 %
bootstrap interval over samples (the run's repeats of a sample stay together) for the first n
samples, n = 4, 8, 16, ... up to all of them (the pairing: vispec_bench/results/differences.py).
A claim holds at n when the interval excludes 1.
The half-width shrinks as 1/√n, so the last row extrapolates the n at which the interval's
half-width falls below --margin (the smallest relative difference the claim should resolve).
"""

from __future__ import annotations

import argparse
import math

from vispec_bench.results.differences import paired_per_sample, throughput_ratio
from vispec_bench.results.records import RunStore
from vispec_bench.results.uncertainty import throughput_ratio_ci


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("x")
    parser.add_argument("y", help="the method X is claimed faster than (ar for a speedup claim)")
    parser.add_argument("--margin", type=float, default=0.05, help="relative difference to resolve, e.g. 0.05")
    parser.add_argument("--engine", help="the engine to compare on, when the run holds several")
    args = parser.parse_args()
    samples, data = paired_per_sample(RunStore(args.run_dir).records(), args.x, args.y, args.engine)
    if len(samples) < 4:
        raise SystemExit(f"{args.run_dir}: only {len(samples)} samples where both {args.x} and {args.y} finished")
    print(f"{args.x} vs {args.y} in {args.run_dir}: per-token decode throughput ratio, 95 % bootstrap interval")
    print(f"{'n':>5}  {'ratio':>7}  {'interval':>17}  {'half-width':>10}  claim holds")
    sizes = sorted({min(len(samples), 2 ** k) for k in range(2, 20)})
    half = None
    for n in sizes:
        part = {name: values[:n] for name, values in data.items()}
        ratio = throughput_ratio(part)
        low, high = throughput_ratio_ci(part["tokens_x"], part["decode_s_x"], part["tokens_y"], part["decode_s_y"])
        half = (high - low) / 2 / ratio
        holds = "yes" if low > 1 or high < 1 else "no"
        print(f"{n:>5}  {ratio:>7.3f}  [{low:.3f}, {high:.3f}]  {half:>9.1%}  {holds}")
    needed = math.ceil(len(samples) * (half / args.margin) ** 2)
    print(f"\nto resolve a {args.margin:.0%} difference (half-width < {args.margin:.0%}): about {needed} samples "
          f"(extrapolated as 1/sqrt(n) from n = {len(samples)})")


if __name__ == "__main__":
    main()
