"""Slowdowns: the whole job's pace changed partway (a fail-slow that hits every rank).

The job's step time (the slowest rank's, per step) is smoothed with a running median,
and the change point is where the cumulative deviation from the overall median peaks
(a CUSUM on the de-spiked series). A change counts when it is large (15% or more) and far outside the
noise of both sides. If only one rank's own work grew, that is a straggler that started
late, reported by the straggler analyzer, not a slowdown.
"""

from __future__ import annotations

import warnings

import numpy as np

from mrcdiag.analyzers.common import job_step_time, robust_sigma, steady_columns
from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.lateness import RankStepMatrix
from mrcdiag.analyzers.settings import DEFAULTS, Settings

# The standard error of a median is this times sigma / sqrt(n) (normal data: sqrt(pi/2)).
MEDIAN_SE_FACTOR = 1.2533


def _running_median(x: np.ndarray, width: int = 5) -> np.ndarray:
    if len(x) < width:
        return x
    pad = width // 2
    padded = np.pad(x, pad, mode="reflect")  # "edge" would weigh an end spike 3 times
    view = np.lib.stride_tricks.sliding_window_view(padded, width)
    return np.median(view, axis=1)


def change_point(x: np.ndarray, min_side: int = DEFAULTS.slowdown_min_side_steps) -> int | None:
    """Index where the level of x changes most, or None when x is too short."""
    if len(x) < 2 * min_side:
        return None
    smooth = _running_median(x)
    # Centred on the mean, the sum is 0 at both ends and peaks at the change; the running
    # median has already taken the spikes out.
    cusum = np.cumsum(smooth - np.mean(smooth))
    inner = np.arange(min_side, len(x) - min_side)
    return int(inner[np.argmax(np.abs(cusum[inner - 1]))])


def find_slowdowns(m: RankStepMatrix, settings: Settings) -> list[Finding]:
    cols = steady_columns(m.duration_s.shape[1], settings.warmup_steps)
    job = job_step_time(m.duration_s[:, cols])
    ok = np.isfinite(job)
    cols, job = cols[ok], job[ok]
    k = change_point(job, settings.slowdown_min_side_steps)
    if k is None or not is_slower(job[:k], job[k:], settings):
        return []
    finding = describe_slowdown(m, cols[:k], cols[k:], settings)
    return [finding] if finding is not None else []


def is_slower(before: np.ndarray, after: np.ndarray, settings: Settings) -> bool:
    """Whether the job's step times `after` are a slower pace than `before`: by 15% or
    more, and far outside the noise of single steps and of the two medians."""
    b, a = float(np.median(before)), float(np.median(after))
    # The shift must stand out from the noise of single steps (2 sigma) and, as a shift of
    # medians, from their standard error (4 SE); the 15% floor keeps small drifts out.
    sigma = max(robust_sigma(before), robust_sigma(after), 1e-6)
    standard_error = MEDIAN_SE_FACTOR * sigma * np.sqrt(1 / len(before) + 1 / len(after))
    shift_needed = max(
        settings.slowdown_step_sigmas * sigma, settings.slowdown_sigmas * standard_error
    )
    return b > 0 and a / b >= settings.slowdown_min_ratio and (a - b) >= shift_needed


def slowdown_severity(ratio: float, lost_s: float, settings: Settings) -> str:
    """critical from 1.5x the pace before; info while it has cost the job less than
    Settings.min_warning_lost_s in all (as for a straggler: a shared machine's pace moves
    by a third for a few dozen steps now and then, a fault worth seeing costs more)."""
    if lost_s < settings.min_warning_lost_s:
        return "info"
    return "critical" if ratio >= settings.slowdown_critical_ratio else "warning"


def describe_slowdown(
    m: RankStepMatrix, before: np.ndarray, after: np.ndarray, settings: Settings
) -> Finding | None:
    """The slowdown between the step columns `before` and `after` (the job is known to be
    slower in them): what grew, on whom. None when only one rank's own work grew (a
    straggler that started late, which the straggler analyzer reports)."""
    cols = np.concatenate([before, after])
    k = len(before)
    job = job_step_time(m.duration_s[:, cols])
    b, a = float(np.nanmedian(job[:k])), float(np.nanmedian(job[k:]))
    # Whose own work grew? busy = step - waiting for peers - data wait
    busy = m.duration_s[:, cols] - m.wait_s[:, cols] - m.data_wait_s[:, cols]
    grew = np.nanmedian(busy[:, k:], axis=1) - np.nanmedian(busy[:, :k], axis=1)
    job_growth = a - b
    data_growth = float(
        np.nanmedian(m.data_wait_s[:, cols][:, k:]) - np.nanmedian(m.data_wait_s[:, cols][:, :k])
    )
    broad = (
        np.mean(grew + 1e-12 >= 0.5 * (job_growth - max(data_growth, 0)))
        >= settings.slowdown_broad_ratio
    )
    if not broad and data_growth < 0.5 * job_growth:
        return None  # one rank's problem: the straggler analyzer reports it
    comm_growth = float(
        np.nanmedian(m.blocked_s[:, cols][:, k:] - m.wait_s[:, cols][:, k:])
        - np.nanmedian(m.blocked_s[:, cols][:, :k] - m.wait_s[:, cols][:, :k])
    )
    compute_growth = float(np.nanmedian(grew)) - max(comm_growth, 0)
    parts = {
        "compute": compute_growth,
        "communication": comm_growth,
        "data_wait": data_growth,
    }
    grown = max(parts, key=lambda p: parts[p])
    start_step = int(cols[k])
    lost = float(np.nansum(np.maximum(job[k:] - b, 0)))
    cause = {
        "compute": "slow_compute",
        "communication": "slow_link",
        "data_wait": "data_loading",
    }[grown]
    advice = (
        "look at what changed on every node at that step: a thermal or power event, a "
        "network degradation, a change in the data (longer sequences), or a phase of the "
        "training code"
    )
    retries = _retry_shares(m, before, after)
    if grown == "compute" and retries is not None:
        share_before, share_after = retries
        if share_after >= settings.memory_retry_share_ratio and share_before <= share_after / 4:
            cause = "memory_pressure"
            advice = (
                "the GPU memory allocators began retrying at that step (each retry frees "
                "the cache and synchronizes the device): give the ranks headroom "
                "(PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, a smaller micro-batch, "
                "activation checkpointing), or find what grew (sequence length, a cache)"
            )
    finding = Finding(
        kind="slowdown",
        severity="critical" if a / b >= settings.slowdown_critical_ratio else "warning",
        cause=cause,
        time_lost_s=lost,
        ranks=tuple(int(r) for r in m.ranks),
        summary=f"from step {start_step} every rank got slower: step time "
        f"{b * 1e3:.1f} ms -> {a * 1e3:.1f} ms (+{100 * (a / b - 1):.0f}%), "
        f"mostly in {grown.replace('_', ' ')}",
        evidence={
            "start_step": start_step,
            "step_time_before_ms": round(b * 1e3, 3),
            "step_time_after_ms": round(a * 1e3, 3),
            "growth_ms": {p: round(v * 1e3, 3) for p, v in parts.items()},
            "ranks_slower": int(np.sum(grew >= 0.5 * job_growth)),
            **(
                {
                    "steps_with_alloc_retries_before": round(retries[0], 3),
                    "steps_with_alloc_retries_after": round(retries[1], 3),
                }
                if retries is not None
                else {}
            ),
        },
        recommendation=advice,
    )
    return finding


def _retry_shares(
    m: RankStepMatrix, before: np.ndarray, after: np.ndarray
) -> tuple[float, float] | None:
    """The share of steps in which the ranks' allocators retried, before and after (the
    median over ranks); None without device figures."""
    if m.alloc_retries is None or not np.isfinite(m.alloc_retries[:, after]).any():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        shares = [
            float(np.nanmedian(np.nanmean(np.nan_to_num(m.alloc_retries[:, cols]) > 0, axis=1)))
            for cols in (before, after)
        ]
    return shares[0], shares[1]
