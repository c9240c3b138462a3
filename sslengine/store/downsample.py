"""Min/max downsampling of long metric series before they reach the browser.

A loss curve of 100k steps drawn from 2k points must still show its spikes: averaging or
striding hides exactly the divergence a researcher is looking for. Min/max bucketing (the
two-extremes-per-pixel-column idea behind M4, Jugel et al., VLDB 2014) keeps, for each bucket
of consecutive points, the point with the smallest and the one with the largest value, so
the drawn envelope equals that of the full series.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def minmax_downsample(
    steps: Sequence[int] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    max_points: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Reduce a series to at most ``max_points`` points, keeping every bucket's extremes.

    Args:
        steps: shape ``(n,)``, sorted ascending.
        values: shape ``(n,)``; NaN and +-inf allowed.
        max_points: upper bound on the output length, at least 2.

    Returns:
        ``(steps, values)`` of shape ``(m,)``, ``m <= max_points``, a subsequence of the input
        in step order. Series no longer than ``max_points`` come back whole.

    The first and last points are always kept. The ``n - 2`` interior points are cut into
    ``B`` consecutive buckets of ``L = ceil((n - 2) / B)`` points (the last may be shorter);
    each bucket keeps its first minimum and first maximum among non-NaN values (an all-NaN
    bucket keeps its first point). If the series has NaNs each bucket also keeps its first
    NaN, so a diverged stretch still shows as a gap; the budget is then 3 points per bucket,
    ``B = (max_points - 2) // 3``, otherwise ``B = (max_points - 2) // 2``.
    """
    steps_arr = np.asarray(steps)
    values_arr = np.asarray(values, dtype=np.float64)
    if steps_arr.shape != values_arr.shape or steps_arr.ndim != 1:
        raise ValueError(f"steps {steps_arr.shape} and values {values_arr.shape} must be (n,)")
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    n = steps_arr.shape[0]
    if n <= max_points:
        return steps_arr, values_arr

    interior = values_arr[1:-1]
    is_nan = np.isnan(interior)
    has_nan = bool(is_nan.any())
    n_buckets = (max_points - 2) // (3 if has_nan else 2)
    if n_buckets == 0:
        keep = np.array([0, n - 1])
        return steps_arr[keep], values_arr[keep]

    m = n - 2
    length = -(-m // n_buckets)  # ceil division
    used_buckets = -(-m // length)
    pad = used_buckets * length - m
    # Pad the last bucket to full length so all buckets reshape into one (B, L) array;
    # ``valid`` marks the real, non-NaN points.
    valid = np.concatenate([~is_nan, np.zeros(pad, dtype=bool)]).reshape(-1, length)
    low = np.concatenate([np.where(is_nan, np.inf, interior), np.full(pad, np.inf)])
    high = np.concatenate([np.where(is_nan, -np.inf, interior), np.full(pad, -np.inf)])
    rows = np.arange(used_buckets)
    offsets = 1 + rows * length
    any_valid = valid.any(axis=1)
    first_valid = valid.argmax(axis=1)
    picks = [np.array([0, n - 1])]
    for filled, pick_extreme in ((low, np.argmin), (high, np.argmax)):
        idx = pick_extreme(filled.reshape(used_buckets, length), axis=1)
        # NaN and padding were filled with +-inf, so a bucket whose real extreme is itself
        # +-inf can tie with them; ties go to the first index, so it is enough to move a
        # pick that landed on a non-valid point to the bucket's first valid one. An all-NaN
        # bucket keeps its first point (idx 0), which is a NaN.
        idx = np.where(~valid[rows, idx] & any_valid, first_valid, idx)
        picks.append(offsets + idx)
    if has_nan:
        nan_rows = np.concatenate([is_nan, np.zeros(pad, dtype=bool)]).reshape(-1, length)
        first_nan = offsets + nan_rows.argmax(axis=1)
        picks.append(first_nan[nan_rows.any(axis=1)])
    keep = np.unique(np.concatenate(picks))
    return steps_arr[keep], values_arr[keep]
