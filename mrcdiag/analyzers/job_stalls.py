"""Job-wide stalls: every rank pauses at once, every N steps or now and then (a checkpoint
written by every rank, an evaluation, a DataLoader whose workers restart at each epoch,
garbage collection), while no rank is late for the others.

Efficiency, not an anomaly: it is how the job is written, and its time is often well
spent; but it is time the accelerators sit idle, and a report that says "no problem"
over a run that spent a third of its time in such pauses hides where the time went.
A step is such a pause where even the rank with the least own work in it (its step
time less its wait for late peers) took far longer than that rank's typical step: a
straggler's stall lengthens the others' steps only by their wait. What grew in those
steps (DataLoader wait, time in collectives, the threads' CPU) says what the pause was.
Pure: the rank x step matrix in, findings out.
"""

from __future__ import annotations

import warnings

import numpy as np

from mrcdiag.analyzers.common import nan_median_rows, steady_columns
from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.lateness import RankStepMatrix
from mrcdiag.analyzers.recurrence import step_pattern
from mrcdiag.analyzers.settings import Settings
from mrcdiag.analyzers.thread_time import cells


def find_job_stalls(
    m: RankStepMatrix, findings: list[Finding], settings: Settings
) -> list[Finding]:
    """An info finding for pauses of the whole job, where they cost a share of the run;
    none where a warning or worse already accounts for the slow steps (a straggler,
    a slowdown, a hang: the pauses are theirs)."""
    if any(f.severity != "info" and f.kind != "interconnect" for f in findings):
        return []
    cols = steady_columns(m.duration_s.shape[1], settings.warmup_steps)
    if len(cols) < settings.job_stall_min_events * 2 or len(m.ranks) < 2:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        own = m.duration_s[:, cols] - np.nan_to_num(m.wait_s[:, cols])
        least = np.nanmin(own, axis=0)  # the rank with the least own work, per step
    known = np.isfinite(least)
    if known.sum() < settings.job_stall_min_events * 2:
        return []
    typical = float(np.median(least[known]))
    pause = np.where(known, least - typical, 0.0)
    floor = max(settings.job_stall_of_step_ratio * typical, settings.job_stall_min_s)
    hit = pause >= floor
    if hit.sum() < settings.job_stall_min_events:
        return []
    steps = cols[hit]
    cost = pause[hit]
    run_s = float(np.nansum(np.nanmax(m.duration_s[:, cols], axis=0)))
    lost_s = float(cost.sum())
    if run_s <= 0 or lost_s < settings.job_stall_min_share_of_run * run_s:
        return []
    pattern = step_pattern(steps, cost)
    if pattern["pattern"] == "span":
        return []  # a stretch of slow steps is a change of pace: the slowdown analyzer's
    each_s = float(np.median(cost))
    if _one_rank_held(m, steps, settings.cause_explains_lateness_ratio * each_s):
        return []  # one rank held inside the collectives: that rank's finding, not the job's
    what, advice = _what_grew(m, steps, cols[~hit], each_s, settings)
    when = (
        f"every {pattern['every_steps']} steps"
        if pattern["pattern"] == "periodic"
        else f"now and then ({len(steps)} of {len(cols)} steps)"
    )
    return [
        Finding(
            kind="idle_compute",
            severity="info",  # the job's own shape: no rank is at fault
            cause="job_stalls",
            time_lost_s=lost_s,
            ranks=tuple(int(r) for r in m.ranks),
            summary=f"the whole job stalls {when}, {each_s * 1e3:.0f} ms each time, "
            f"{100 * lost_s / run_s:.0f}% of the run: {what}",
            evidence={
                **pattern,
                "stalls": len(steps),
                "stall_ms": round(each_s * 1e3, 3),
                "typical_step_ms": round(typical * 1e3, 3),
                "stalled_steps": _listed(steps),
            },
            recommendation=advice,
        )
    ]


def _one_rank_held(m: RankStepMatrix, stalled: np.ndarray, explains_s: float) -> bool:
    """Whether one rank's thread was held in the stalled steps (each with the step
    before it) far more than the others': by its cgroup's CPU limit, or waiting for a
    CPU. Such a rank holds every rank inside the collectives it is in (gloo moves the
    data on the ranks' own threads), so that every rank's step grows alike and none
    arrives late: a rank's fault that looks like the job's (a container's limit on one
    FSDP2 rank read as "a large collective now and then")."""
    for a in (m.cpu_throttled_s, m.cpu_wait_s):
        if a is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_rank = nan_median_rows(cells(a, np.arange(len(m.ranks)), stalled, True))
        known = np.isfinite(per_rank)
        if known.sum() < 2:
            continue
        top = int(np.nanargmax(per_rank))
        others = np.delete(per_rank, top)
        if per_rank[top] - float(np.nanmedian(others)) >= explains_s:
            return True
    return False


def _what_grew(
    m: RankStepMatrix, stalled: np.ndarray, quiet: np.ndarray, each_s: float, settings: Settings
) -> tuple[str, str]:
    """What the ranks did in the stalled steps beyond a quiet one's, the rank median:
    waited for their DataLoader, sat in collectives, computed, or none of these."""
    explains = settings.cause_explains_lateness_ratio * each_s

    def growth(a: np.ndarray | None) -> float:
        if a is None or not len(quiet):
            return float("nan")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(
                np.nanmedian(
                    np.nanmedian(a[:, stalled], axis=1) - np.nanmedian(a[:, quiet], axis=1)
                )
            )

    data, comm, cpu = growth(m.data_wait_s), growth(m.blocked_s), growth(m.cpu_s)
    if data >= explains:
        return (
            f"every rank waits {data * 1e3:.0f} ms more for its DataLoader in those steps",
            "keep the DataLoader's workers between epochs (persistent_workers=True), raise "
            "prefetch_factor, or check the storage the data comes from",
        )
    if comm >= explains:
        return (
            f"every rank spends {comm * 1e3:.0f} ms more in collectives in those steps (a "
            "large collective now and then: gathering a checkpoint or metrics)",
            "gather less at those steps (sharded checkpoints, fewer metrics), or overlap it "
            "with the next steps",
        )
    if cpu >= explains:
        return (
            f"every rank computes {cpu * 1e3:.0f} ms more in those steps (an evaluation, a "
            "checkpoint's serialization, garbage collection)",
            "if this work is not meant to run this often, run it less often or on fewer "
            "ranks; gc.freeze() after start-up spares the collector the model's objects",
        )
    return (
        "the ranks' threads were off the CPU (writing a checkpoint, a sync to storage, a "
        "sleep), not waiting for data or for each other",
        "write checkpoints asynchronously (torch.distributed.checkpoint.async_save) or "
        "less often; look for blocking I/O in the training loop",
    )


def _listed(steps: np.ndarray, most: int = 12) -> str:
    shown = ", ".join(str(int(s)) for s in steps[:most])
    return shown + (f", ... ({len(steps)} in all)" if len(steps) > most else "")
