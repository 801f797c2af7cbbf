"""Small robust statistics and step windows shared by the analyzers."""

from __future__ import annotations

import math
import warnings

import numpy as np

from mrcdiag.analyzers.settings import Settings

MAD_TO_SIGMA = 1.4826


def steady_columns(n_steps: int, warmup_steps: int) -> np.ndarray:
    """Step indices after warm-up (all of them when the run is too short to drop any)."""
    cut = warmup_steps if n_steps >= 2 * warmup_steps else 0
    return np.arange(cut, n_steps)


def robust_sigma(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return 0.0
    return float(MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))


def windows(columns: np.ndarray, min_size: int, count: int) -> list[np.ndarray]:
    """Non-overlapping windows of steps, long enough for a median to mean something."""
    size = max(min_size, len(columns) // count)
    if len(columns) < 2 * size:
        return [columns]
    n = len(columns) // size
    parts = [columns[i * size : (i + 1) * size] for i in range(n)]
    parts[-1] = columns[(n - 1) * size :]  # the remainder joins the last window
    return parts


def column_view(columns: np.ndarray) -> slice | np.ndarray:
    """Step columns as a slice where they are one stretch (the steady steps, a window of
    them), so that a matrix indexed with them is a view, not a copy of every rank's row
    (a 130 MB copy at 16384 ranks x 2000 steps); as they are otherwise."""
    n = len(columns)
    if n and int(columns[-1]) - int(columns[0]) == n - 1 and bool((np.diff(columns) == 1).all()):
        return slice(int(columns[0]), int(columns[-1]) + 1)
    return columns


def job_step_time(duration: np.ndarray) -> np.ndarray:
    """Per step, the slowest rank's duration: in synchronous training that is the job's
    (NaN where no rank has the step). fmax passes NaNs by: no copy of the matrix."""
    if not duration.shape[0]:
        return np.full(duration.shape[1], np.nan)
    return np.fmax.reduce(duration, axis=0)


def binomial_tail(n: int, k: int, p: float) -> float:
    """How likely `k` or more of `n` independent trials succeed, each with chance `p`."""
    return float(sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(max(k, 0), n + 1)))


def nan_median_rows(values: np.ndarray) -> np.ndarray:
    """np.nanmedian(values, axis=1), the same numbers, without its loop over rows: numpy
    medians each row of more than 600 columns in its own Python call (a quarter of a
    second at 4096 ranks). Rows without NaN are one selection; only rows with NaN go
    through nanmedian."""
    if values.ndim != 2 or not values.shape[1]:
        return np.nanmedian(values, axis=1)
    holes = np.isnan(values).any(axis=1)
    if not holes.any():
        return np.median(values, axis=1)
    out = np.empty(len(values))
    out[~holes] = np.median(values[~holes], axis=1)
    with warnings.catch_warnings():  # a row of nothing but NaN is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        out[holes] = np.nanmedian(values[holes], axis=1)
    return out


def nan_percentile_rows(values: np.ndarray, q: float) -> np.ndarray:
    """The q-th percentile of each row, NaNs left out (NaN for a row with none), as
    numpy's linear method, without its loop over rows (np.nanpercentile with an axis
    runs one Python call per row: seconds at thousands of ranks)."""
    rows = np.sort(values, axis=1)  # NaNs last
    n = np.sum(~np.isnan(values), axis=1)
    position = q / 100 * np.maximum(n - 1, 0)
    lo = np.floor(position).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    index = np.arange(len(rows))
    below, above = rows[index, lo], rows[index, hi]
    out = below + (above - below) * (position - lo)
    return np.where(n > 0, out, np.nan)


def severity_of_lost(lost_s: float, run_s: float, settings: Settings) -> str:
    """An anomaly's severity from what it cost: critical from a fifth of the run, warning
    from 2% (the settings' ratios), never more than info under min_warning_lost_s."""
    share = lost_s / run_s if run_s > 0 else 0.0
    if lost_s < settings.min_warning_lost_s:
        return "info"
    if share >= settings.critical_lost_of_run_ratio:
        return "critical"
    return "warning" if share >= settings.warning_lost_of_run_ratio else "info"
