"""A job held back by its containers' CPU limits, on most of its ranks alike.

One throttled rank is a straggler (cause cpu_throttled) and a limit that begins to bite
partway is a slowdown; both compare the ranks with their peers or their own past. A job
whose every rank runs under a limit too tight from the start (a pod with
`resources.limits.cpu` below what its ranks, DataLoader workers and framework threads
use) has neither: each step simply waits for the next CFS period. The step records say
how long each rank's cgroup was held (capture/cgroup_cpu.py): as far as the training
thread was off the CPU meanwhile (ready to run and held, or waiting for its helper
threads or peers that the limit held), per step, that is time the rank lost to it.
"""

from __future__ import annotations

import warnings

import numpy as np

from mrcdiag.analyzers.common import job_step_time, steady_columns
from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.lateness import RankStepMatrix
from mrcdiag.analyzers.settings import Settings
from mrcdiag.store.reader import RunData, rank_ranges


def find_cpu_limit(
    run: RunData, m: RankStepMatrix, named: set[int], settings: Settings
) -> list[Finding]:
    """`named`: ranks whose throttling a straggler or slowdown finding already tells."""
    if m.cpu_throttled_s is None:
        return []
    cols = steady_columns(m.duration_s.shape[1], settings.warmup_steps)
    if not len(cols):
        return []
    if m.cpu_s is None:
        return []
    duration = m.duration_s[:, cols]
    # NaN where either is not known; held no longer than the thread was off the CPU
    held = np.minimum(m.cpu_throttled_s[:, cols], np.maximum(duration - m.cpu_s[:, cols], 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # ranks with nothing known
        share = np.nansum(held, axis=1) / np.nansum(
            np.where(np.isnan(held), np.nan, duration), axis=1
        )
    rows = [
        i
        for i, rank in enumerate(m.ranks)
        if int(rank) not in named and share[i] >= settings.cpu_limit_held_of_step_ratio
    ]
    if not rows or len(rows) < 0.5 * len(m.ranks):
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_step = np.nanmedian(held[rows], axis=0)
    lost_s = float(np.nansum(per_step))
    run_s = float(np.nansum(job_step_time(duration)))
    lost_share = lost_s / run_s if run_s > 0 else 0.0
    severity = "info"
    if lost_s >= settings.min_warning_lost_s:
        if lost_share >= settings.critical_lost_of_run_ratio:
            severity = "critical"
        elif lost_share >= settings.warning_lost_of_run_ratio:
            severity = "warning"
    ranks = tuple(int(m.ranks[i]) for i in rows)
    nodes = tuple(sorted({run.host_of(r) for r in ranks}))
    typical = float(np.nanmedian(share[rows]))
    return [
        Finding(
            kind="idle_compute",
            severity=severity,
            cause="cpu_throttled",
            time_lost_s=lost_s,
            ranks=ranks,
            nodes=nodes,
            summary=f"the CPU limit of their containers held ranks {rank_ranges(list(ranks))} "
            f"for {100 * typical:.0f}% of each step (median over ranks): their threads "
            "waited for the next CFS period, with no other process on the CPU",
            evidence={
                "held_share_of_step_per_rank": {
                    str(int(m.ranks[i])): round(float(share[i]), 3) for i in rows[:16]
                },
                "held_ms_per_step": round(lost_s / len(cols) * 1e3, 3),
            },
            recommendation="raise or remove the CPU limit of the ranks' containers "
            "(Kubernetes resources.limits.cpu, docker --cpus, systemd CPUQuota; cpu.max or "
            "cpu.cfs_quota_us): it must cover each rank's threads, its DataLoader workers "
            "and the framework's threads; or lower num_workers and OMP_NUM_THREADS to fit",
        )
    ]
