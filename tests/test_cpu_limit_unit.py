"""CPU limits as causes, on hand-made runs: a node whose pods are throttled, a job whose
every rank is, and the clocks that tell them from heavier work."""

from __future__ import annotations

import numpy as np
from handmade import lockstep

from mrcdiag.analyzers import analyze
from mrcdiag.analyzers.instances import collective_instances
from mrcdiag.analyzers.lateness import rank_step_matrix


def _nodes(run, per_host: int = 2):
    for rank, info in run.ranks.items():
        info.host = f"node{rank // per_host}"
    return run


def _serious(run) -> list:
    return [f for f in analyze(run).findings if f.severity != "info"]


def test_a_node_whose_ranks_are_held_by_their_cpu_limit_says_so() -> None:
    # node1's ranks take 20 ms longer a step, computing as much as the others and
    # hardly waiting in a run queue: their cgroups held them 22 ms a step
    run = _nodes(
        lockstep(
            6,
            120,
            compute_ms={r: 30.0 if r in (2, 3) else 10.0 for r in range(6)},
            thread_ms=lambda r, k: (8.0, 0.5, 22.0 if r in (2, 3) else 0.0),
        )
    )
    (finding,) = _serious(run)
    assert (finding.kind, finding.cause, finding.nodes) == ("straggler", "slow_node", ("node1",))
    assert finding.evidence["reason"] == "cpu_throttled", finding
    assert "CPU limit" in finding.summary and "limits.cpu" in finding.recommendation


def test_a_node_whose_ranks_compute_more_is_slow_compute_there() -> None:
    run = _nodes(
        lockstep(
            6,
            120,
            compute_ms={r: 30.0 if r in (2, 3) else 10.0 for r in range(6)},
            thread_ms=lambda r, k: (28.0 if r in (2, 3) else 8.0, 0.5, 0.0),
        )
    )
    (finding,) = _serious(run)
    assert finding.cause == "slow_node" and finding.evidence["reason"] == "slow_compute"
    assert "drain or inspect" in finding.recommendation


def test_a_job_held_alike_by_its_cpu_limit_is_told_and_a_free_one_is_not() -> None:
    held = lockstep(4, 120, compute_ms=30.0, thread_ms=lambda r, k: (8.0, 0.5, 20.0))
    (finding,) = _serious(held)
    assert (finding.kind, finding.cause, finding.ranks) == (
        "idle_compute",
        "cpu_throttled",
        (0, 1, 2, 3),
    )
    # 20 ms held of each ~32 ms step, as far as the thread was off the CPU: most of the run
    assert finding.severity == "critical" and finding.evidence["held_ms_per_step"] > 15
    free = lockstep(4, 120, compute_ms=30.0, thread_ms=lambda r, k: (28.0, 0.5, 0.0))
    assert _serious(free) == []
    unknown = lockstep(4, 120, compute_ms=30.0, thread_ms=lambda r, k: (8.0, 0.5))
    assert [f for f in analyze(unknown).findings if f.cause == "cpu_throttled"] == []


def test_a_rank_held_inside_its_collectives_is_a_straggler_of_its_limit() -> None:
    # rank 2's container holds it 20 ms a step while its arrivals are on time (the limit
    # held its collectives' threads: the others waited inside the collective), its peers
    # are not held: the stragglers' arrival test has nothing, the held time tells
    run = lockstep(
        4, 120, compute_ms=30.0, thread_ms=lambda r, k: (8.0, 0.5, 20.0 if r == 2 else 0.0)
    )
    (finding,) = _serious(run)
    assert (finding.kind, finding.cause, finding.ranks) == ("straggler", "cpu_throttled", (2,))
    assert finding.evidence["held_share_of_step_others"] == 0, finding.evidence
    # its peers held as much are the job's limit, not this rank's
    alike = lockstep(
        4, 120, compute_ms=30.0, thread_ms=lambda r, k: (8.0, 0.5, 20.0 if r >= 1 else 0.0)
    )
    assert [(f.kind, f.ranks) for f in _serious(alike)] == [("idle_compute", (1, 2, 3))]


def test_a_one_rank_job_held_by_its_limit_is_the_jobs_finding() -> None:
    run = lockstep(1, 120, compute_ms=30.0, thread_ms=lambda r, k: (8.0, 0.5, 20.0))
    (finding,) = _serious(run)
    assert (finding.kind, finding.cause, finding.ranks) == ("idle_compute", "cpu_throttled", (0,))


def test_a_cgroups_held_time_summed_over_its_cpus_counts_as_no_more_than_the_step() -> None:
    # Four ranks of one pod held together: the kernel adds the held time up over the CPUs
    # it held them on, 4 x 20 ms a step. Each rank was off the CPU for about 24 ms of its
    # ~32 ms step (8 ms on a CPU), and held no longer than that.
    run = lockstep(4, 120, compute_ms=30.0, thread_ms=lambda r, k: (8.0, 0.5, 80.0))
    m = rank_step_matrix(run, collective_instances(run))
    off_cpu = m.duration_s - m.cpu_s
    assert np.nanmax(m.cpu_throttled_s - off_cpu) <= 1e-9
    assert np.nanmedian(m.cpu_throttled_s) > 0.02  # the whole off-CPU time
    (finding,) = _serious(run)
    assert (finding.kind, finding.cause) == ("idle_compute", "cpu_throttled")
    share = finding.evidence["held_share_of_step_per_rank"]
    assert all(0.5 < v <= 1.0 for v in share.values()), share
    assert finding.evidence["held_ms_per_step"] < 32, finding.evidence
