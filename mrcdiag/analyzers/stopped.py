"""Ranks stopped from outside, as their node agents saw them (collectors/stops.py).

A synchronous job stops with any one of its ranks. Where the rank stops between
collectives, it arrives late and the straggler analysis finds it; where it stops inside
one (CPU jobs on gloo, whose ranks move the data themselves), every rank ends that
collective late together and no arrival points at it. The node agent's count of the
time each rank's process was stopped covers both: a rank stopped far more than its peers
is that stop's straggler. Pure: run data and the straggler findings in, findings out.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np

from mrcdiag.analyzers.common import job_step_time, severity_of_lost, steady_columns
from mrcdiag.analyzers.findings import Finding, severity_rank
from mrcdiag.analyzers.lateness import RankStepMatrix
from mrcdiag.analyzers.pipeline import slowdowns_of_no_stage
from mrcdiag.analyzers.settings import Settings
from mrcdiag.analyzers.stragglers import counter_rates
from mrcdiag.metrics import RANK_STOPPED
from mrcdiag.store.reader import RunData


def with_stopped_ranks(
    run: RunData, m: RankStepMatrix, findings: list[Finding], settings: Settings
) -> list[Finding]:
    """`findings`, with what the node agents saw of ranks stopped: added to the straggler
    finding that already blames such a rank (its lateness, a pipeline stage's stalls),
    or a finding of its own where none does."""
    cols = steady_columns(m.duration_s.shape[1], settings.warmup_steps)
    job = job_step_time(m.duration_s[:, cols]) if len(cols) else np.array([])
    job = job[np.isfinite(job)]
    if len(job) == 0:
        return findings
    run_s = float(job.sum())
    # over the steps judged: live, the agents keep samples from further back, and a
    # rank's stops must end with the finding when they end
    rates = counter_rates(run, RANK_STOPPED, over_last_s=run_s)
    if len(rates) < 2:
        return findings
    out = list(findings)
    for rank, rate in sorted(rates.items()):
        peers = [r for other, r in rates.items() if other != rank]
        peers_rate = float(np.median(peers))
        if rate < settings.stopped_min_s_per_s or peers_rate > settings.stopped_peers_ratio * rate:
            continue
        if rank not in m.ranks:
            continue
        lost_s = rate * run_s * (1.0 - _wait_share(m, m.row(rank), cols))
        severity = severity_of_lost(lost_s, run_s, settings)
        evidence = {
            "stopped_s_per_s": round(rate, 4),
            "stopped_s_per_s_others": round(peers_rate, 4),
        }
        said = (
            f"the node agent saw its process stopped {100 * rate:.0f}% of the time (its peers "
            f"{100 * peers_rate:.0f}%)"
        )
        blamed = next(
            (i for i, f in enumerate(out) if f.kind == "straggler" and f.ranks == (rank,)),
            None,
        )
        if blamed is not None:
            f = out[blamed]
            # where the stops account for half of what the rank cost or more, they are
            # its cause: a stopped process waits for a CPU when it runs again, on a busy
            # host, and that is what its thread's clocks showed
            stops_explain = lost_s >= 0.5 * f.time_lost_s
            out[blamed] = replace(
                f,
                cause="unknown" if stops_explain else f.cause,
                severity=max(f.severity, severity, key=severity_rank),
                time_lost_s=max(f.time_lost_s, lost_s),
                summary=f"{f.summary}; {said}",
                evidence={**f.evidence, **evidence},
                recommendation=_ADVICE if stops_explain else f.recommendation,
            )
            continue
        host = run.host_of(rank)
        out.append(
            Finding(
                kind="straggler",
                severity=severity,
                cause="unknown",
                time_lost_s=lost_s,
                ranks=(rank,),
                nodes=(host,),
                summary=f"rank {rank} on {host} stops the job: {said}, stopped from outside "
                "(SIGSTOP, a scheduler suspending it); every rank waits for it, inside "
                "collectives too, where no late arrival shows it",
                evidence={**evidence, "job_step_time_ms": round(float(np.median(job)) * 1e3, 3)},
                recommendation=_ADVICE,
            )
        )
    return out


def _wait_share(m: RankStepMatrix, row: int, cols: np.ndarray) -> float:
    """The share of its steps a rank spent waiting for late peers: a stop that falls
    there costs the job nothing, one that falls anywhere else (its own work, a
    collective's transfer) holds every rank for as long."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        total = float(np.nansum(m.duration_s[row, cols]))
        waited = float(np.nansum(m.wait_s[row, cols]))
    return min(max(waited / total, 0.0), 1.0) if total > 0 else 0.0


_ADVICE = (
    "find what stops this process: a scheduler's suspend (Slurm gang scheduling, "
    "preemption by suspend), a supervisor or watchdog sending SIGSTOP, a debugger; "
    "`ps -o pid,stat,cmd` shows T while it is stopped"
)


def unexplained_slowdowns(slowdowns: list[Finding], findings: list[Finding]) -> list[Finding]:
    """The slowdowns that neither a pipeline stage's stalls (pipeline.py) nor a rank seen
    stopped explain, live and after the run alike. A rank stopped now and then stops
    every rank with it, so the job's pace jumps as the stops fall in and out of its
    steps, on every rank: that was read as a change of pace (a 1F1B run with stage 1
    stopped 40 ms of every 100 ms, on a host whose cores were all busy, got a critical
    host_contention slowdown live beside the stage's finding)."""
    slowdowns = slowdowns_of_no_stage(slowdowns, findings)
    stopped = any(f.severity != "info" and "stopped_s_per_s" in f.evidence for f in findings)
    return [] if stopped else slowdowns
