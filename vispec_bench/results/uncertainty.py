"""Bootstrap confidence intervals over samples (a sample's repeats stay together).

Every figure here is a ratio of sums over samples, so a resample only needs the column sums of
n rows drawn with replacement: one gather-and-sum per chunk of resamples, no Python loop over
resamples.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
SEED = 0  # fixed: the same records always give the same interval
LEVEL = 0.95
_CHUNK = 250  # resamples per gather: bounds memory at CHUNK x num_samples x k values


def resampled_sums(per_sample: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, k] column sums of `per_sample` [n, k] over n samples drawn with replacement."""
    n = per_sample.shape[0]
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        drawn = rng.integers(0, n, size=(size, n))  # [size, n] sample indices
        chunks.append(per_sample[drawn].sum(axis=1))  # [size, k]
    return np.concatenate(chunks)


def interval(values: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """Percentile interval of bootstrap values; None when no resample gave a finite value."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def ratio_ci(numerator: np.ndarray, denominator: np.ndarray) -> list[float] | None:
    """CI of Σ numerator / Σ denominator over samples; None for fewer than 2 samples."""
    if len(numerator) < 2:
        return None
    sums = resampled_sums(np.stack([numerator, denominator], axis=1).astype(float))
    with np.errstate(divide="ignore", invalid="ignore"):
        return interval(sums[:, 0] / sums[:, 1])


def ratio_difference_ci(numerator_x, denominator_x, numerator_y, denominator_y) -> list[float] | None:
    """CI of Σ numerator_x / Σ denominator_x − Σ numerator_y / Σ denominator_y, paired: one
    resample of the samples draws X's and Y's sums together (rows are samples)."""
    if len(numerator_x) < 2:
        return None
    sums = resampled_sums(np.stack([numerator_x, denominator_x, numerator_y, denominator_y], axis=1).astype(float))
    with np.errstate(divide="ignore", invalid="ignore"):
        return interval(sums[:, 0] / sums[:, 1] - sums[:, 2] / sums[:, 3])


def throughput_ratio_ci(tokens_m, time_m, tokens_ar, time_ar) -> list[float] | None:
    """CI of (Σ tokens_m / Σ time_m) / (Σ tokens_ar / Σ time_ar): the per-token speedup."""
    if len(tokens_m) < 2:
        return None
    sums = resampled_sums(np.stack([tokens_m, time_m, tokens_ar, time_ar], axis=1).astype(float))
    with np.errstate(divide="ignore", invalid="ignore"):
        return interval((sums[:, 0] / sums[:, 1]) / (sums[:, 2] / sums[:, 3]))


def geomean_ci(log_ratios: np.ndarray) -> list[float] | None:
    """CI of exp(mean of per-sample log ratios)."""
    if len(log_ratios) < 2:
        return None
    sums = resampled_sums(np.stack([log_ratios, np.ones_like(log_ratios)], axis=1).astype(float))
    return interval(np.exp(sums[:, 0] / sums[:, 1]))
