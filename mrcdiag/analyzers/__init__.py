"""The analysis: one module per question, pure functions from run data to findings.

`analyze` runs them all on one run and hands the renderers everything they show: the
findings, the summary (with each rank's time split), the steady window, per-instance bus
bandwidth and per-record wait, and the notes on the data. Renderers compute nothing of
their own. Every threshold comes from one `Settings` record (analyzers/settings.py).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np

from mrcdiag.analyzers.common import steady_columns
from mrcdiag.analyzers.cpu_limit import find_cpu_limit
from mrcdiag.analyzers.executor import analysis_executor
from mrcdiag.analyzers.fabric import find_fabric_causes
from mrcdiag.analyzers.findings import Finding, sort_findings, with_first_seen_live
from mrcdiag.analyzers.flight import find_flight_divergence
from mrcdiag.analyzers.hangs import find_hangs, find_live_hangs
from mrcdiag.analyzers.idle import find_idle
from mrcdiag.analyzers.instances import Instances, instances_and_transfer
from mrcdiag.analyzers.interconnect import find_interconnect
from mrcdiag.analyzers.job_stalls import find_job_stalls
from mrcdiag.analyzers.lateness import RankStepMatrix, rank_step_matrix, step_matrices
from mrcdiag.analyzers.link_rates import find_degraded_links
from mrcdiag.analyzers.numa import find_numa_mismatch
from mrcdiag.analyzers.p2p import find_no_p2p
from mrcdiag.analyzers.pcie import find_pcie_degraded
from mrcdiag.analyzers.pipeline import (
    find_stage_imbalance,
    find_stage_stalls,
)
from mrcdiag.analyzers.pseudo_steps import with_pseudo_steps
from mrcdiag.analyzers.settings import DEFAULTS, Settings
from mrcdiag.analyzers.slowdown import find_slowdowns
from mrcdiag.analyzers.stacks import stack_groups
from mrcdiag.analyzers.stopped import unexplained_slowdowns, with_stopped_ranks
from mrcdiag.analyzers.stragglers import find_stragglers
from mrcdiag.analyzers.summary import Summary, busbw_gbps, group_sizes, summarize
from mrcdiag.store.flight_recorder import FlightDump
from mrcdiag.store.reader import RunData


@dataclass(frozen=True)
class Analysis:
    run: RunData
    instances: Instances
    summary: Summary
    matrix: RankStepMatrix
    findings: list[Finding]
    steady_steps: np.ndarray  # step columns after warm-up, what the statistics use
    busbw_gbps: np.ndarray  # per instance (NaN where the transfer time is unknown)
    notes: list[str]  # on the data: what is missing, torn, dropped or disabled
    settings: Settings
    # ranks grouped by identical stacks, where they wrote them (a hang, a stopped job)
    stack_groups: list[dict] = dataclasses.field(default_factory=list)

    def record_wait_ns(self) -> np.ndarray:
        """Per row of run.collectives: its wait for the instance's last arrival (0 for
        point-to-point rows); made when asked (a row's worth of int64: 260 MB at 16384
        ranks x 2000 steps, which only the timeline export draws)."""
        out = np.zeros(len(self.run.collectives), dtype=np.int64)
        out[self.instances.record_index] = self.instances.wait_ns
        return out


def analyze(
    run: RunData,
    expected_busbw_gbps: float | None = None,
    settings: Settings = DEFAULTS,
    live_now_ns: int | None = None,
    flight_dumps: dict[int, FlightDump] | None = None,
) -> Analysis:
    """Everything the renderers show. With `live_now_ns` (the present on the run's aligned
    clock) `run` is the recent window of a job that still runs: hangs are judged by how
    long ranks have waited until now, and slowdowns are left to the live analysis
    (agent/live.py), which holds one it found after the window has slid past it.
    `flight_dumps` are PyTorch's flight recorder dumps by rank, where the job has them.
    The steps are taken from run.step_grid where the reader made it (which is then
    used up), else from run.steps' rows."""
    run = with_pseudo_steps(run)
    # After the run, two threads, numpy's big loops running outside the GIL: the
    # matrices of the step records beside the collective instances, their transfer
    # times and the own lateness beside the arrivals' lateness, then the summary beside
    # the findings (4096 ranks x 2000 steps: 14 -> 10 s on 2 cores). Live, beside a
    # training job, one thread: a second core taken in bursts slows the job's own
    # threads (gloo's among them) more than the tick's saved time is worth. numpy's
    # "empty slice" warnings are silenced for the whole of it, as the analyzers do one
    # by one: warning filters are process-wide, and two threads setting and restoring
    # them could leave either state behind.
    with warnings.catch_warnings(), analysis_executor(live_now_ns is None) as beside:
        warnings.simplefilter("ignore", RuntimeWarning)
        from_steps = beside.submit(step_matrices, run)
        instances, transfer = instances_and_transfer(run, beside)
        matrix = rank_step_matrix(run, instances, from_steps.result(), beside)
        instances.transfer_ns = transfer.result()
        steady = steady_columns(matrix.duration_s.shape[1], settings.warmup_steps)
        busbw = busbw_gbps(instances, group_sizes(run, instances.group))
        summary_job = beside.submit(summarize, run, instances, matrix, steady, busbw)
        findings = _findings(run, instances, matrix, busbw, settings, live_now_ns)
        summary = summary_job.result()
        findings += find_interconnect(
            run, instances, summary.time_split, busbw, settings, expected_busbw_gbps
        )
        findings += find_fabric_causes(run, matrix, settings)
        findings += find_degraded_links(run, instances, settings)
    if flight_dumps:
        findings += find_flight_divergence(flight_dumps, run.host_of)
    return Analysis(
        run=run,
        instances=instances,
        summary=summary,
        matrix=matrix,
        findings=with_first_seen_live(sort_findings(findings), run.live_findings),
        steady_steps=steady,
        busbw_gbps=busbw,
        notes=data_notes(run),
        settings=settings,
        stack_groups=stack_groups(run) if live_now_ns is None else [],
    )


def _findings(
    run: RunData,
    instances: Instances,
    matrix: RankStepMatrix,
    busbw: np.ndarray,
    settings: Settings,
    live_now_ns: int | None,
) -> list[Finding]:
    """The findings that need no summary: hangs, stragglers and what explains them,
    stages, slowdowns, CPU limits, idle compute."""
    findings: list[Finding] = []
    if live_now_ns is None:
        findings += find_hangs(run, matrix.spans)
    else:
        findings += find_live_hangs(run, live_now_ns, settings.hang_after_s)
    stragglers = find_stragglers(run, instances, matrix, settings)
    findings += stragglers
    findings += find_pcie_degraded(run, stragglers, settings)
    findings += find_numa_mismatch(run, stragglers)
    findings += find_no_p2p(run, instances, busbw)
    findings += find_stage_imbalance(run, matrix, settings)
    # ranks a straggler finding blames: not those of an info finding, such as the note
    # that every rank of a host waits for a CPU (a pipeline stage stopped from outside on
    # a busy host is still that stage's finding)
    blamed = {
        r for f in findings if f.kind == "straggler" and f.severity != "info" for r in f.ranks
    }
    findings += find_stage_stalls(run, matrix, blamed, settings)
    # what the node agents saw of ranks stopped: told with the finding that blames such
    # a rank (its lateness, a pipeline stage's stalls), or on its own
    findings = with_stopped_ranks(run, matrix, findings, settings)
    if live_now_ns is None:
        findings += unexplained_slowdowns(find_slowdowns(matrix, settings), findings)
    findings = _with_cpu_limit(run, matrix, findings, settings)
    explained = tuple(
        sorted(
            {r for f in findings if f.kind == "straggler" and f.severity != "info" for r in f.ranks}
        )
    )
    findings += find_idle(run, matrix, explained, settings)
    findings += find_job_stalls(matrix, findings, settings)
    return findings


def _with_cpu_limit(
    run: RunData, m: RankStepMatrix, findings: list[Finding], settings: Settings
) -> list[Finding]:
    """What the containers' CPU limits held, where no straggler or slowdown already says
    so: the job (most ranks alike), which replaces the note that every rank of its hosts
    waits for a CPU (the contention it would be taken for); or a rank that the stragglers'
    arrival test missed, which replaces an info finding on that rank."""
    if any(f.kind == "slowdown" and f.cause == "cpu_throttled" for f in findings):
        return findings
    # an info finding that names the limit is not enough: the limit held the rank inside
    # its collectives too, where no arrival is late (an FSDP2 rank held 20% of the run
    # was an info straggler of 0.23 s, late in 4 steps of 57), and the finding of what
    # the limit held replaces it
    named = {
        r
        for f in findings
        if f.kind in ("straggler", "slowdown") and f.severity != "info"
        for r in f.ranks
    }
    limit = find_cpu_limit(run, m, named, settings)
    if not limit:
        return findings
    hosts = {h for f in limit if f.kind == "idle_compute" for h in f.nodes}
    held_ranks = {r for f in limit if f.kind == "straggler" for r in f.ranks}
    kept = [
        f
        for f in findings
        if not (
            f.kind == "straggler"
            and f.severity == "info"
            and (
                (f.cause == "host_contention" and f.nodes and set(f.nodes) <= hosts)
                or (len(f.ranks) == 1 and f.ranks[0] in held_ranks)
            )
        )
    ]
    return kept + limit


def data_notes(run: RunData) -> list[str]:
    """What a reader of any report format must know about the data behind it."""
    notes = list(run.problems)
    dropped = sum(i.dropped_records for i in run.ranks.values())
    if dropped:
        notes.append(f"{dropped} records were dropped because the writer fell behind")
    for info in run.ranks.values():
        if info.disabled_reason:
            notes.append(f"rank {info.rank} stopped recording: {info.disabled_reason}")
    return notes
