"""Pipeline stages: a stage slower than the others holds the whole pipeline to its pace.

In a pipeline (ranks that pass activations to each other by send and receive) every
stage waits for its neighbours, so the step time is the slowest stage's and every
rank's steps look alike; no rank arrives late at a collective. What differs is each
stage's own work: its step time less the time it sat blocked in point-to-point and
collective calls and in its DataLoader. A stage whose own work clearly exceeds the
others' (an uneven split of layers, a slower device) is the bottleneck: one finding,
`stage_imbalance`, for that stage, not a straggler of every rank.

A stage that is held now and then (stopped from outside, a stall every N steps, a
co-tenant's bursts) moves no median: its own work jumps above its usual in a minority of
steps while the other stages wait in their receives. Each stage's excess over its own
usual work, step by step, is what the pipeline waited for it; where one stage holds
nearly all of it, that stage is an episodic straggler (`find_stage_stalls`), judged by
the stragglers' rules for episodes (what it cost, its rhythm, why).
"""

from __future__ import annotations

import warnings

import numpy as np

from mrcdiag.analyzers.common import job_step_time, nan_median_rows, steady_columns
from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.instances import P2P_CODES
from mrcdiag.analyzers.lateness import RankStepMatrix
from mrcdiag.analyzers.recurrence import step_pattern
from mrcdiag.analyzers.settings import Settings
from mrcdiag.analyzers.stragglers import (
    cause_from_rates,
    holding_up,
    lateness_cause,
    straggler_severity,
)
from mrcdiag.analyzers.thread_time import thread_time
from mrcdiag.store.reader import RunData


def find_stage_imbalance(run: RunData, m: RankStepMatrix, settings: Settings) -> list[Finding]:
    stages, cols, own = _stage_work(run, m, settings)
    if len(stages) < 2 or len(cols) < 3:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_stage = nan_median_rows(own)
    if not np.isfinite(per_stage).all():
        return []
    order = np.argsort(-per_stage)
    slowest, runner_up = int(order[0]), float(per_stage[order[1]])
    rest = float(np.median(np.delete(per_stage, slowest)))
    excess = float(per_stage[slowest]) - rest
    if (
        rest <= 0
        or per_stage[slowest] < settings.stage_imbalance_ratio * rest
        or excess < settings.min_persistent_lateness_s
    ):
        return []
    # in most steps, not in a few: the stage's work, not one preemption
    others_max = np.nanmax(np.delete(own, slowest, axis=0), axis=0)
    if np.nanmean(own[slowest] > others_max) < settings.persistence_ratio:
        return []
    job = job_step_time(m.duration_s[:, cols])
    run_s = float(np.nansum(job))
    step_s = float(np.nanmedian(job))
    # A stage that only waited longer for a CPU (its host shares cores) is contention,
    # the stragglers' finding, not an uneven split; unless its own CPU work is itself
    # heavier by as much (both, then). The stragglers' test of contention, over the
    # steady steps: the thread's clocks, or the agent's rates for runs without them.
    rank = stages[slowest]
    others = np.array([m.row(r) for r in stages if r != rank])
    tt = thread_time(m, m.row(rank), others, cols)
    if tt is not None:
        contended = tt.cause(excess, settings) in ("host_contention", "cpu_throttled")
        heavier = tt.cpu_s >= settings.stage_imbalance_ratio * tt.cpu_others_s
    else:
        contended = cause_from_rates(run, m, rank, cols, excess, {}, settings) == "host_contention"
        heavier = False
    if contended and not heavier:
        return []
    # what-if: the pipeline at the pace of its next slowest stage
    lost_s = max(float(per_stage[slowest]) - runner_up, 0.0) * len(cols)
    share = lost_s / run_s if run_s > 0 else 0.0
    severity = (
        "info"  # as for any straggler: a short run's share says little under 0.25 s
        if lost_s < settings.min_warning_lost_s
        else "critical"
        if share >= settings.critical_lost_of_run_ratio
        else "warning"
        if share >= settings.warning_lost_of_run_ratio
        else "info"
    )
    host = run.host_of(rank)
    return [
        Finding(
            kind="straggler",
            severity=severity,
            cause="stage_imbalance",
            time_lost_s=lost_s,
            ranks=(rank,),
            nodes=(host,),
            summary=f"pipeline stage on rank {rank} ({host}) works {excess * 1e3:.1f} ms more "
            f"per step than the other stages' median ({per_stage[slowest] * 1e3:.1f} ms "
            f"against {rest * 1e3:.1f} ms): the whole pipeline goes at its pace",
            evidence={
                **(tt.evidence() if tt is not None else {}),
                "own_work_ms_per_stage": {
                    str(r): round(float(v) * 1e3, 3) for r, v in zip(stages, per_stage, strict=True)
                },
                "job_step_time_ms": round(step_s * 1e3, 3),
            },
            recommendation="rebalance the layers between stages (split by measured time, "
            "not by layer count), or give this stage's device a lighter share",
        )
    ]


# in a stage stall's evidence: where the other stages waited for it
STALL_MARK = "others_waited_in"


def slowdowns_of_no_stage(slowdowns: list[Finding], findings: list[Finding]) -> list[Finding]:
    """The slowdowns that no pipeline stage's stalls among `findings` explain. A stage
    held now and then (stopped from outside) makes every stage wait in its receives,
    which the step records count as time in communication, not as waiting for a peer:
    the job's pace changes when the stalls begin, on every rank, "mostly in
    communication", and was read as a slow link (a 1F1B run with stage 1 stopped 40 ms
    of every 100 ms: its stall finding, and a critical slow_link slowdown from the step
    its stalls began). A slowdown whose onset falls within a stage's stalls is that
    stage's; live and after the run alike."""
    spans = []
    for f in findings:
        if f.severity != "info" and f.evidence.get(STALL_MARK) == "receives":
            first, last = map(int, str(f.evidence["straggling_steps"]).split("-"))
            spans.append((first, last))
    return [
        s
        for s in slowdowns
        if not any(first <= int(s.evidence.get("start_step", -1)) <= last for first, last in spans)
    ]


def _stage_work(
    run: RunData, m: RankStepMatrix, settings: Settings
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The ranks that send or receive point to point, the steady steps, and each such
    stage's own work in them ([stage, step]: step time less its time blocked in sends,
    receives, collectives and its DataLoader)."""
    c = run.collectives
    cols = steady_columns(m.duration_s.shape[1], settings.warmup_steps)
    stages = sorted({int(r) for r in c["rank"][np.isin(c["op"], P2P_CODES)]}) if len(c) else []
    rows = [m.row(r) for r in stages]
    own = (m.duration_s - m.blocked_s - m.data_wait_s)[np.ix_(rows, cols)]
    return stages, cols, own


def find_stage_stalls(
    run: RunData, m: RankStepMatrix, named: set[int], settings: Settings
) -> list[Finding]:
    """A pipeline stage held now and then; `named`: ranks another finding already blames."""
    stages, cols, own = _stage_work(run, m, settings)
    if len(stages) < 2 or len(cols) < 3:
        return []
    job = job_step_time(m.duration_s[:, cols])
    run_s, step_s = float(np.nansum(job)), float(np.nanmedian(job))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        usual = np.nanmedian(own, axis=1, keepdims=True)
    floor = max(settings.min_lateness_of_step_ratio * step_s, settings.min_lateness_s)
    cost = np.nan_to_num(np.maximum(own - usual, 0.0))
    cost[cost < floor] = 0.0
    totals = cost.sum(axis=1)
    best = int(np.argmax(totals))
    rank = stages[best]
    others = np.delete(totals, best)
    hits = cols[holding_up(cost[best], floor)]
    if (
        rank in named
        or totals[best] < settings.episodic_min_lost_of_run_ratio * run_s
        or totals[best] < settings.episodic_concentration * float(np.max(others))
        or len(hits) < settings.episodic_min_events
        or len(hits) >= settings.episodic_share_of_span_ratio * len(cols)
    ):
        return []
    hit_cost = cost[best][np.isin(cols, hits)]
    pattern = step_pattern(hits, hit_cost)
    late_s = float(np.median(hit_cost))
    lost_s = float(hit_cost.sum())
    row = m.row(rank)
    peers = np.array([m.row(r) for r in stages if r != rank])
    evidence: dict[str, object] = {
        "stall_ms": round(late_s * 1e3, 3),
        "usual_own_work_ms": round(float(usual[best, 0]) * 1e3, 3),
        "job_step_time_ms": round(step_s * 1e3, 3),
        "straggling_steps": f"{int(hits.min())}-{int(hits.max())}",
        **pattern,
        STALL_MARK: "receives",
    }
    cause, detail, advice = lateness_cause(
        run, m, row, peers, hits, late_s, step_s, evidence, settings
    )
    host = run.host_of(rank)
    return [
        Finding(
            kind="straggler",
            severity=straggler_severity(
                settings, late_s, lost_s, step_s, run_s, len(hits) / len(cols), pattern
            ),
            cause=cause,
            time_lost_s=lost_s,
            ranks=(rank,),
            nodes=(host,),
            summary=f"pipeline stage on rank {rank} ({host}) holds the pipeline up now and "
            f"then ({len(hits)} of {len(cols)} steps, {late_s * 1e3:.1f} ms beyond its usual "
            f"work each time){detail}; the other stages waited for it in their receives",
            evidence=evidence,
            recommendation=advice,
        )
    ]
