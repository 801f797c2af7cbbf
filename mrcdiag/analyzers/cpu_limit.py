"""A job held back by its containers' CPU limits, on most of its ranks alike.

Most: more than half of the ranks, and two at least (or the one rank of a one-rank job);
fewer are the stragglers' matter.

One throttled rank is a straggler (cause cpu_throttled) and a limit that begins to bite
partway is a slowdown; both compare the ranks with their peers or their own past. A rank
held while its peers are not, whose lateness the stragglers' arrival test misses (the
limit holds its collectives' threads too, so the others wait inside the collective and
its arrivals are not late), is told here as a straggler of that cause. A job
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

from mrcdiag.analyzers.common import job_step_time, severity_of_lost, steady_columns
from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.lateness import RankStepMatrix
from mrcdiag.analyzers.settings import Settings
from mrcdiag.store.reader import RunData, rank_ranges


def find_cpu_limit(
    run: RunData, m: RankStepMatrix, named: set[int], settings: Settings
) -> list[Finding]:
    """`named`: ranks whose throttling, or lateness, a finding already tells."""
    if m.cpu_throttled_s is None or m.cpu_s is None or not (m.cpu_throttled_s > 0).any():
        return []  # no limit held any rank (NaN > 0 is False)
    cols = steady_columns(m.duration_s.shape[1], settings.warmup_steps)
    if not len(cols):
        return []
    duration = m.duration_s[:, cols]
    held = m.cpu_throttled_s[:, cols]  # NaN where not known; within the off-CPU time
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # ranks with nothing known
        share = np.nansum(held, axis=1) / np.nansum(
            np.where(np.isnan(held), np.nan, duration), axis=1
        )
    share = np.nan_to_num(share)
    rows = [i for i in range(len(m.ranks)) if share[i] >= settings.cpu_limit_held_of_step_ratio]
    run_s = float(np.nansum(job_step_time(duration)))
    if rows and len(rows) > 0.5 * len(m.ranks) and (len(rows) >= 2 or len(m.ranks) == 1):
        rows = [i for i in rows if int(m.ranks[i]) not in named]
        return [_job_held(run, m, rows, held, share, len(cols), run_s, settings)] if rows else []
    if len(m.ranks) < 2:
        return []
    # A few ranks held while their peers are not: each is why the others wait, inside
    # collectives too (a collective's threads are held with the rest of the process), where
    # its arrivals need not be late at all
    peers_share = float(np.median(np.delete(share, rows))) if len(rows) < len(share) else 0.0
    return [
        _rank_held(run, m, i, held, share, peers_share, run_s, settings)
        for i in rows
        if int(m.ranks[i]) not in named
        and peers_share <= settings.cpu_limit_peers_held_ratio * share[i]
    ]


_ADVICE = (
    "raise or remove the CPU limit of {whose} (Kubernetes resources.limits.cpu, docker "
    "--cpus, systemd CPUQuota; cpu.max or cpu.cfs_quota_us): it must cover each rank's "
    "threads, its DataLoader workers and the framework's threads; or lower num_workers and "
    "OMP_NUM_THREADS to fit"
)


def _rank_held(
    run: RunData,
    m: RankStepMatrix,
    row: int,
    held: np.ndarray,
    share: np.ndarray,
    peers_share: float,
    run_s: float,
    settings: Settings,
) -> Finding:
    rank = int(m.ranks[row])
    lost_s = float(np.nansum(held[row]))
    host = run.host_of(rank)
    return Finding(
        kind="straggler",
        severity=severity_of_lost(lost_s, run_s, settings),
        cause="cpu_throttled",
        time_lost_s=lost_s,
        ranks=(rank,),
        nodes=(host,),
        summary=f"rank {rank} on {host} was held by its container's CPU limit for "
        f"{100 * share[row]:.0f}% of each step (peers {100 * peers_share:.0f}%): its threads, "
        "those of its collectives included, waited for the next CFS period, and the others "
        "waited for it",
        evidence={
            "held_share_of_step": round(float(share[row]), 3),
            "held_share_of_step_others": round(peers_share, 3),
            "held_ms_per_step": round(lost_s / held.shape[1] * 1e3, 3),
        },
        recommendation=_ADVICE.format(whose="this rank's container or cgroup"),
    )


def _job_held(
    run: RunData,
    m: RankStepMatrix,
    rows: list[int],
    held: np.ndarray,
    share: np.ndarray,
    n_steps: int,
    run_s: float,
    settings: Settings,
) -> Finding:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_step = np.nanmedian(held[rows], axis=0)
    lost_s = float(np.nansum(per_step))
    ranks = tuple(int(m.ranks[i]) for i in rows)
    typical = float(np.median(share[rows]))
    return Finding(
        kind="idle_compute",
        severity=severity_of_lost(lost_s, run_s, settings),
        cause="cpu_throttled",
        time_lost_s=lost_s,
        ranks=ranks,
        nodes=tuple(sorted({run.host_of(r) for r in ranks})),
        summary=f"the CPU limit of their containers held ranks {rank_ranges(list(ranks))} "
        f"for {100 * typical:.0f}% of each step (median over ranks): their threads "
        "waited for the next CFS period, with no other process on the CPU",
        evidence={
            "held_share_of_step_per_rank": {
                str(int(m.ranks[i])): round(float(share[i]), 3) for i in rows[:16]
            },
            "held_ms_per_step": round(lost_s / n_steps * 1e3, 3),
        },
        recommendation=_ADVICE.format(whose="the ranks' containers"),
    )
