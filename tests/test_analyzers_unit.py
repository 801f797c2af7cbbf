"""Each analyzer on small hand-made runs, including the edges."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from handmade import MS, lockstep, make_run, node_samples

from mrcdiag.analyzers import analyze
from mrcdiag.analyzers.common import nan_median_rows
from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.settings import DEFAULTS
from mrcdiag.analyzers.slowdown import change_point, is_slower
from mrcdiag.capture.probe import _fastest_clean_round
from mrcdiag.store.reader import RunData
from mrcdiag.store.step_grid import StepGridBuilder


def kinds(analysis) -> list[tuple[str, str, tuple]]:
    return [(f.kind, f.cause, f.ranks) for f in analysis.findings if f.severity != "info"]


def test_balanced_ranks_raise_nothing() -> None:
    assert kinds(analyze(lockstep(4, 60))) == []


def test_one_slow_rank_is_the_only_straggler_with_its_cost() -> None:
    a = analyze(lockstep(4, 60, compute_ms={0: 10, 1: 10, 2: 15, 3: 10}))
    stragglers = [f for f in a.findings if f.kind == "straggler"]
    # no node samples: no signal tells why, so the cause is not guessed
    assert [(f.ranks, f.cause) for f in stragglers] == [((2,), "unknown")]
    # 5 ms late in each of the 57 steady steps, less the others' noise
    assert abs(stragglers[0].time_lost_s - 0.005 * 57) < 0.05


def test_rank_late_only_because_its_collectives_end_late_is_no_straggler() -> None:
    """Ring all-reduce over a slow link: one rank always gets the result 5 ms after the
    others, so it arrives 5 ms late at the next one, though its own work is no slower."""
    late_ends = lockstep(4, 60, end_late_ms={2: 5})
    assert not [f for f in analyze(late_ends).findings if f.kind == "straggler"]
    both = analyze(lockstep(4, 60, compute_ms={0: 10, 1: 10, 2: 10, 3: 15}, end_late_ms={2: 5}))
    stragglers = [f for f in both.findings if f.kind == "straggler"]
    assert [(f.ranks, f.cause) for f in stragglers] == [((3,), "unknown")]


def test_single_rank_run_has_a_summary_and_no_findings() -> None:
    a = analyze(lockstep(1, 20))
    assert a.findings == []
    assert a.summary.step_time_p50_s is not None


def test_single_step_run_does_not_fail() -> None:
    a = analyze(lockstep(3, 1, compute_ms={0: 10, 1: 50, 2: 10}))
    assert [f for f in a.findings if f.kind == "straggler"] == []
    assert a.summary.steps == 1


def test_lateness_inside_a_group_that_is_not_the_world() -> None:
    run = lockstep(4, 40, compute_ms={0: 10, 1: 18, 2: 10, 3: 10}, group=(0, 1))
    stragglers = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert [f.ranks for f in stragglers] == [(1,)]
    # the finding says where the others waited for it: the group it shares with rank 0
    label = run.groups[0].label
    assert list(stragglers[0].evidence["others_waited_in_groups"]) == [label]
    assert stragglers[0].summary.endswith(f"the others waited for it in {label}")


def test_overlapping_async_buckets_are_counted_once_per_step() -> None:
    run = lockstep(3, 40, compute_ms={0: 10, 1: 20, 2: 10}, buckets=4, is_async=True)
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert abs(finding.time_lost_s - 0.010 * 37) < 0.03  # not 4x that


def test_slow_dataloader_is_named() -> None:
    run = lockstep(3, 40, data_ms={2: 8})
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert finding.ranks == (2,) and finding.cause == "data_loading"


def test_every_rank_of_one_node_late_is_one_slow_node_finding() -> None:
    run = lockstep(4, 40, compute_ms={0: 10, 1: 10, 2: 16, 3: 16})
    for r in (2, 3):
        run.ranks[r].host = "h1"
    stragglers = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert [(f.cause, f.nodes, f.ranks) for f in stragglers] == [("slow_node", ("h1",), (2, 3))]


def test_change_point_is_found_where_the_level_moves() -> None:
    rng = np.random.default_rng(1)
    x = np.r_[rng.normal(10, 0.3, 70), rng.normal(14, 0.3, 50)]
    assert abs(change_point(x) - 70) <= 2


def test_everyone_slower_from_a_step_on_is_a_slowdown() -> None:
    before = lockstep(3, 40, seed=1)
    after = lockstep(3, 40, compute_ms=16.0, seed=2)
    shift = int(before.steps["t_end_ns"].max())
    steps = [
        (int(r), int(k), int(a), int(b), 0, 0)
        for r, k, a, b in zip(
            before.steps["rank"],
            before.steps["step"],
            before.steps["t_start_ns"],
            before.steps["t_end_ns"],
            strict=True,
        )
    ]
    steps += [
        (int(r), int(k) + 40, int(a) + shift, int(b) + shift, 0, 0)
        for r, k, a, b in zip(
            after.steps["rank"],
            after.steps["step"],
            after.steps["t_start_ns"],
            after.steps["t_end_ns"],
            strict=True,
        )
    ]
    colls = []
    for run, dk, dt, dq in ((before, 0, 0, 0), (after, 40, shift, 40)):
        c = run.collectives
        colls += [
            (
                int(r),
                "all_reduce",
                0,
                int(q) + dq,
                1 << 20,
                int(a) + dt,
                int(e) + dt,
                int(k) + dk,
                False,
            )
            for r, q, a, e, k in zip(
                c["rank"], c["seq"], c["t_arrive_ns"], c["t_end_ns"], c["step"], strict=True
            )
        ]
    a = analyze(make_run(3, steps, colls))
    (slow,) = [f for f in a.findings if f.kind == "slowdown"]
    assert abs(slow.evidence["start_step"] - 40) <= 2
    assert [f for f in a.findings if f.kind == "straggler"] == []


def test_a_rank_missing_from_the_last_collective_is_a_hang() -> None:
    colls = []
    for seq in range(1, 11):
        for r in range(3):
            if r == 2 and seq == 10:
                continue
            colls.append((r, "all_reduce", 0, seq, 4096, seq * MS, seq * MS + 100, seq, False))
    stuck = {r: {"op": "all_reduce", "group_name": "0", "seq": 11, "nbytes": 4096} for r in (0, 1)}
    run = make_run(3, [], colls, closed={0: False, 1: False, 2: False}, stuck=stuck)
    (hang,) = [f for f in analyze(run).findings if f.kind == "hang"]
    assert hang.ranks == (2,) and hang.cause == "missing_rank"
    assert hang.evidence["waiting"]["0"]["seq"] == 11
    assert "all_reduce #11" in hang.summary


def test_slow_group_among_equal_groups_is_a_slow_link() -> None:
    colls = []
    for seq in range(1, 21):
        for g, members, ms in ((0, (0, 1), 1.0), (1, (2, 3), 4.0)):
            for r in members:
                colls.append(
                    (
                        r,
                        "all_reduce",
                        g,
                        seq,
                        8 << 20,
                        seq * 10 * MS,
                        seq * 10 * MS + int(ms * MS),
                        0,
                        False,
                    )
                )
    run = make_run(4, [], colls, groups=[(0, 1), (2, 3)])
    (link,) = [f for f in analyze(run).findings if f.cause == "slow_link"]
    assert link.ranks == (2, 3)


def test_slow_rank_whose_gpu_throttles_is_gpu_throttling() -> None:
    run = lockstep(4, 40, compute_ms={0: 10, 1: 10, 2: 10, 3: 16})
    rows = [(t, "mrcdiag_gpu_rank_info", "gpu=1,rank=3,local_rank=3,pid=9", 1.0) for t in range(5)]
    rows += [
        (t, "mrcdiag_gpu_clock_event_active", f"gpu={g},reason=sw_thermal", 1.0 if g == 1 else 0.0)
        for t in range(5)
        for g in range(4)
    ]
    run.node_samples["h0"] = node_samples(rows)
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert finding.ranks == (3,) and finding.cause == "gpu_throttling"
    assert finding.evidence["gpu_clock_events"] == "sw_thermal"


def test_power_cap_on_every_gpu_is_not_the_slow_ranks_cause() -> None:
    run = lockstep(4, 40, compute_ms={0: 10, 1: 10, 2: 10, 3: 16})
    rows = [
        (t, "mrcdiag_gpu_clock_event_active", f"gpu={g},reason=sw_power_cap", 1.0)
        for t in range(5)
        for g in range(4)
    ]
    run.node_samples["h0"] = node_samples(rows)
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert finding.ranks == (3,) and finding.cause == "unknown"


def test_probe_locates_the_host_whose_links_are_slow() -> None:
    run = lockstep(3, 30)
    for r, host in enumerate(("a", "b", "c")):
        run.ranks[r].host = host
    run.link_probe = [
        {"a": "a", "b": "b", "gbps": 0.01},
        {"a": "a", "b": "c", "gbps": 1.0},
        {"a": "b", "b": "c", "gbps": 0.012},
    ]
    links = [f for f in analyze(run).findings if f.cause == "slow_link"]
    assert [(f.nodes, f.ranks) for f in links] == [(("b",), (1,))]


def test_probe_time_spent_waiting_for_a_cpu_is_not_the_links() -> None:
    # the probe keeps the fastest round whose ends did not wait for a CPU ...
    assert _fastest_clean_round([1e-3, 2e-3, 0.5e-3], [0, 0, 0.4e-3], [0, 1e-6, 0]) == (1e-3, 0)
    # ... or, where none is clean, the fastest with what its ends waited
    assert _fastest_clean_round([3e-3, 2e-3], [1e-3, 1e-3], []) == (2e-3, 1e-3)
    run = lockstep(3, 30)
    for r, host in enumerate(("a", "b", "c")):
        run.ranks[r].host = host
    mb = 1_000_000  # host b's process sat in a run queue through every round ...
    run.link_probe = [
        {"a": "a", "b": "b", "bytes": mb, "gbps": 0.01, "rtt_s": 0.2, "cpu_wait_s": 0.198},
        {"a": "a", "b": "c", "bytes": mb, "gbps": 1.0, "rtt_s": 0.002, "cpu_wait_s": 0.0},
        {"a": "b", "b": "c", "bytes": mb, "gbps": 0.012, "rtt_s": 0.17, "cpu_wait_s": 0.168},
    ]
    assert not [f for f in analyze(run).findings if f.cause == "slow_link"]
    # ... but a link still slow once that wait is taken off is slow
    for pair in run.link_probe:
        pair["cpu_wait_s"] = min(pair["cpu_wait_s"], 0.05)
    links = [f for f in analyze(run).findings if f.cause == "slow_link"]
    assert [f.nodes for f in links] == [("b",)]


def test_run_without_marked_steps_gets_steps_from_its_collectives() -> None:
    from mrcdiag.store.reader import Columns

    marked = lockstep(3, 40, compute_ms={0: 10, 1: 10, 2: 16})
    empty = {k: v[:0] for k, v in marked.steps.data.items()}
    unmarked = make_run(3, [], [])
    unmarked.collectives = marked.collectives
    unmarked.steps = Columns(empty)
    a = analyze(unmarked)
    assert any("no step was marked" in p for p in a.run.problems)
    (finding,) = [f for f in a.findings if f.kind == "straggler"]
    assert finding.ranks == (2,)


def test_rank_that_vanished_is_named_not_the_ones_the_launcher_terminated() -> None:
    colls = []
    for seq in range(1, 11):  # terminated survivors lost their last records unevenly
        for r, last in ((0, 7), (1, 10), (2, 9)):
            if seq <= last:
                colls.append((r, "all_reduce", 0, seq, 4096, seq * MS, seq * MS + 100, seq, False))
    run = make_run(3, [], colls, closed={0: False, 1: False, 2: False})
    run.ranks[0].terminated = run.ranks[1].terminated = True
    (hang,) = [f for f in analyze(run).findings if f.kind == "hang"]
    assert hang.ranks == (2,)


def _port_samples(rate_gbit: list[float], sent_mb: float) -> object:
    rate = "mrcdiag_fabric_port_rate_bytes_per_second"
    sent = "mrcdiag_fabric_port_transmit_bytes_total"
    rows = [(t, rate, "device=mlx5_0,port=1", g * 1e9 / 8) for t, g in enumerate(rate_gbit)]
    rows += [(t, sent, "device=mlx5_0,port=1", t * sent_mb * 1e6) for t in range(len(rate_gbit))]
    return node_samples(rows)


def test_port_that_trained_down_on_one_node_is_a_degraded_link() -> None:
    run = lockstep(3, 30)
    for r, host in enumerate(("a", "b", "c")):
        run.ranks[r].host = host
        run.node_samples[host] = _port_samples([400.0] * 5 if host != "b" else [200.0] * 5, 50)
    (link,) = [f for f in analyze(run).findings if f.cause == "link_degraded"]
    assert (link.nodes, link.ranks, link.severity) == (("b",), (1,), "warning")
    assert link.evidence["rate_gbit_s"] == 200.0 and link.evidence["usual_gbit_s"] == 400.0


def test_port_that_drops_mid_run_is_degraded_and_an_idle_one_only_info() -> None:
    run = lockstep(2, 30)
    for r, host in enumerate(("a", "b")):
        run.ranks[r].host = host
    run.node_samples["a"] = _port_samples([400.0, 400.0, 100.0, 100.0], 50)
    run.node_samples["b"] = _port_samples([400.0, 400.0, 400.0, 100.0], 0)  # carried nothing
    links = {f.nodes: f for f in analyze(run).findings if f.cause == "link_degraded"}
    assert links[("a",)].severity == "warning" and links[("a",)].evidence["dropped_during_run"]
    assert links[("b",)].severity == "info" and links[("b",)].time_lost_s == 0.0


def test_ports_at_the_same_rate_everywhere_are_no_finding() -> None:
    run = lockstep(3, 30)
    for r, host in enumerate(("a", "b", "c")):
        run.ranks[r].host = host
        run.node_samples[host] = _port_samples([400.0] * 5, 50)
    assert not [f for f in analyze(run).findings if f.cause == "link_degraded"]


def test_ddp_all_reduces_that_outlast_backward_count_as_time_in_collectives() -> None:
    from mrcdiag.store.schema import SOURCE_CODE

    steps, colls = [], []
    for step in range(20):
        t0 = step * 10 * MS
        for r in range(2):
            steps.append((r, step, t0, t0 + 10 * MS, 0, 0))  # the hook saw no blocking
            # two buckets: the first overlaps backward, the last is handed over when
            # backward's compute is done (t0 + 6 ms) and completes 3 ms later
            colls.append(
                (r, "all_reduce", 0, 2 * step + 1, 1 << 20, t0 + 3 * MS, t0 + 5 * MS, step, True)
            )
            colls.append(
                (r, "all_reduce", 0, 2 * step + 2, 1 << 20, t0 + 6 * MS, t0 + 9 * MS, step, True)
            )
    run = make_run(2, steps, colls)
    run.collectives.data["source"][:] = SOURCE_CODE["ddp"]
    assert analyze(run).summary.comm_fraction == pytest.approx(0.3, abs=0.01)
    run.collectives.data["source"][:] = SOURCE_CODE["python"]  # the user's own async ops
    assert analyze(run).summary.comm_fraction == pytest.approx(0.0, abs=0.01)


def _counters(run, wait_extra: float = 0.0, cpu: dict[int, float] | None = None) -> None:  # noqa: ANN001
    """Per-rank counters of 4 ranks over 5 s: run-queue wait 0.1 s/s each, rank 3
    `wait_extra` more; CPU seconds at the given rates (s/s), where given."""
    rows = []
    for k in range(6):
        for r in range(4):
            wait = 0.1 + (wait_extra if r == 3 else 0.0)
            rows.append(
                (k * 1_000_000_000, "mrcdiag_rank_cpu_wait_seconds_total", f"rank={r}", k * wait)
            )
            if cpu is not None:
                rows.append(
                    (k * 1_000_000_000, "mrcdiag_rank_cpu_seconds_total", f"rank={r}", k * cpu[r])
                )
    run.node_samples["h0"] = node_samples(rows)


def _cpu_wait(run, extra_s_per_s: float) -> None:  # noqa: ANN001
    _counters(run, wait_extra=extra_s_per_s)


def test_run_queue_wait_that_explains_the_lateness_is_host_contention() -> None:
    run = lockstep(4, 40, compute_ms={0: 10, 1: 10, 2: 10, 3: 30})
    _cpu_wait(run, 0.7)  # 0.7 s/s of a ~30 ms step: 21 ms of the 20 ms it is late
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert finding.ranks == (3,) and finding.cause == "host_contention"


def test_run_queue_wait_short_of_the_lateness_leaves_the_cause_to_the_work() -> None:
    run = lockstep(4, 40, compute_ms={0: 10, 1: 10, 2: 10, 3: 30})
    _cpu_wait(run, 0.2)  # above the 0.15 s/s floor, but 6 ms of 20 ms late
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert finding.ranks == (3,) and finding.cause == "unknown"
    assert finding.evidence["cpu_wait_s_per_s"] == 0.3


def test_extra_cpu_time_that_explains_the_lateness_is_slow_compute() -> None:
    run = lockstep(4, 40, compute_ms={0: 10, 1: 10, 2: 10, 3: 30})
    # rank 3 busy 0.95 s/s, its peers 0.35: 0.6 s/s of a ~32 ms step explains 20 ms
    _counters(run, cpu={0: 0.35, 1: 0.35, 2: 0.35, 3: 0.95})
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert finding.ranks == (3,) and finding.cause == "slow_compute"
    assert finding.evidence["cpu_s_per_s"] == 0.95


def test_a_rank_late_with_no_extra_cpu_time_is_not_called_slow_compute() -> None:
    """Stopped from outside (SIGSTOP, a hypervisor): late, yet it burns no more CPU."""
    run = lockstep(4, 40, compute_ms={0: 10, 1: 10, 2: 10, 3: 30})
    _counters(run, cpu={0: 0.35, 1: 0.35, 2: 0.35, 3: 0.33})
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert finding.ranks == (3,) and finding.cause == "unknown"
    assert "cpu_s_per_s" in finding.evidence


def _late_rank_3(thread_ms) -> object:  # noqa: ANN001
    """4 ranks, rank 3 20 ms late every step; its thread's clocks from `thread_ms`."""
    run = lockstep(4, 40, compute_ms={0: 10, 1: 10, 2: 10, 3: 30}, thread_ms=thread_ms)
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert finding.ranks == (3,)
    return finding


def test_the_threads_own_clocks_over_the_late_steps_name_the_cause() -> None:
    # the agent's whole-run rates say contention; the steps themselves say heavier work
    def heavier(rank: int, step: int) -> tuple[float, float]:
        return (29.0 if rank == 3 else 9.0), 0.5

    run = lockstep(4, 40, compute_ms={0: 10, 1: 10, 2: 10, 3: 30}, thread_ms=heavier)
    _cpu_wait(run, 0.7)
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert finding.cause == "slow_compute", finding
    assert finding.evidence["step_cpu_ms"] == 29.0
    assert "computes 29.0 ms per step" in finding.summary


def test_waiting_in_the_run_queue_per_step_is_host_contention() -> None:
    finding = _late_rank_3(lambda r, k: (9.0, 20.0 if r == 3 else 0.5))
    assert finding.cause == "host_contention", finding
    assert "waited 20.0 ms per step for a CPU" in finding.summary


def test_a_shared_core_that_also_inflates_cpu_time_is_host_contention() -> None:
    # 8 ms more CPU and 7 ms more run-queue wait: per CPU second it waits 2x its peers
    finding = _late_rank_3(lambda r, k: (17.0, 12.0) if r == 3 else (9.0, 3.0))
    assert finding.cause == "host_contention", finding


def test_heavier_work_under_uniform_contention_is_slow_compute() -> None:
    # more ranks than cores: every thread waits about as long per CPU second
    finding = _late_rank_3(lambda r, k: (20.0, 12.0) if r == 3 else (8.0, 5.0))
    assert finding.cause == "slow_compute", finding


def test_a_thread_off_the_cpu_without_waiting_for_one_is_said_to_be_stopped() -> None:
    finding = _late_rank_3(lambda r, k: (9.0, 0.5))
    assert finding.cause == "unknown", finding
    assert "off the CPU without waiting for one" in finding.summary


@pytest.mark.parametrize(
    ("hiccup_ms", "severities"), [(3.0, {"info"}), (20.0, {"warning", "critical"})]
)
def test_hiccups_now_and_then_on_one_rank_warn_only_when_large_against_a_step(
    hiccup_ms: float, severities: set[str]
) -> None:
    # rank 1 held up now and then with no rhythm (rank 0 of a Trainer drawing its progress
    # bar; a rank stopped from outside): a few ms in a 12 ms step is that process's jitter
    steps_hit = {4, 7, 11, 13, 18, 22, 26, 27, 31, 37, 40, 43, 47, 52, 55, 58}
    run = lockstep(2, 60, extra_ms=lambda r, k: hiccup_ms if r == 1 and k in steps_hit else 0.0)
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert finding.ranks == (1,) and finding.evidence["pattern"] == "intermittent", finding
    assert finding.severity in severities


def test_a_stall_every_tenth_step_is_a_periodic_straggler_with_its_cost() -> None:
    run = lockstep(3, 80, extra_ms=lambda r, k: 150.0 if r == 2 and k % 10 == 5 else 0.0)
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert finding.ranks == (2,) and finding.severity != "info"
    assert finding.evidence["pattern"] == "periodic"
    assert finding.evidence["every_steps"] == 10
    stalls = len([k for k in range(3, 80) if k % 10 == 5])
    assert abs(finding.time_lost_s - 0.150 * stalls) <= 0.1 * 0.150 * stalls
    assert "every 10 steps" in finding.summary


@pytest.mark.parametrize(("extra_cpu_ms", "cause"), [(150.0, "slow_compute"), (0.0, "unknown")])
def test_a_stall_that_begins_in_the_step_before_is_judged_by_its_whole_work(
    extra_cpu_ms: float, cause: str
) -> None:
    # rank 0 evaluates every 10th step after its backward pass: its thread computes the
    # 150 ms in step k-1, its peers wait for it at their first collective of step k. With
    # no extra CPU anywhere (a sleep, a write to storage) it was off the CPU.
    def clocks(rank: int, step: int) -> tuple[float, float]:
        return (10.0 + (extra_cpu_ms if rank == 0 and step % 10 == 4 else 0.0)), 0.5

    run = lockstep(
        3, 80, extra_ms=lambda r, k: 150.0 if r == 0 and k % 10 == 5 else 0.0, thread_ms=clocks
    )
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert finding.ranks == (0,) and finding.evidence["pattern"] == "periodic", finding
    assert finding.cause == cause, finding
    if cause == "slow_compute":
        assert "computes 170.0 ms over each late step and the one before it" in finding.summary
    else:
        assert "off the CPU without waiting for one" in finding.summary


def test_a_stall_every_tenth_step_is_found_whole_where_the_rank_also_lags_in_places() -> None:
    """Windows in which the stalling rank also lags a little (a busy machine) used to make
    it a lasting straggler over those windows only: 2 of its 8 stalls, told `intermittent`."""
    lags = set(range(3, 14)) | set(range(43, 54))
    run = lockstep(
        3,
        80,
        extra_ms=lambda r, k: (150.0 if k % 10 == 5 else 3.0 if k in lags else 0.0) * (r == 2),
    )
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert finding.ranks == (2,)
    assert (finding.evidence["pattern"], finding.evidence["every_steps"]) == ("periodic", 10)
    assert finding.evidence["straggling_steps"] == "5-75"


@pytest.mark.parametrize(("steps", "found"), [(12, False), (60, True)])
def test_a_lasting_straggler_needs_more_steps_behind_than_chance_gives(
    steps: int, found: bool
) -> None:
    """Two ranks: each is behind the other in half the steps of a clean job. Behind in 8
    of 9 steady steps happens by chance 2% of the time (a clean 12-step Trainer run did);
    in 50 of 57 it does not."""
    run = lockstep(2, steps, extra_ms=lambda r, k: 2.6 if r == 1 and k % 9 != 4 else 0.0)
    stragglers = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert [f.ranks for f in stragglers] == ([(1,)] if found else [])


@pytest.mark.parametrize("behind_ms", [2.0, 5.0])
def test_a_stall_on_a_rank_that_is_also_behind_in_every_step_costs_both(behind_ms: float) -> None:
    """Told as the stall with the lateness in between (2 ms), or as the lateness with the
    stalls (5 ms, a fifth of the cost): either way both are named and both cost."""
    stalls = [k for k in range(3, 80) if k % 10 == 5]
    run = lockstep(
        3, 80, extra_ms=lambda r, k: ((150.0 if k in stalls else 0.0) + behind_ms) * (r == 2)
    )
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert finding.ranks == (2,), finding
    every = finding.evidence.get("every_steps") or finding.evidence.get("stalls_every_steps")
    assert every == 10, finding
    assert "every 10 steps" in finding.summary and f"{behind_ms:.1f} ms" in finding.summary
    # the stalls (a trimmed mean cut them out) and the lateness in between
    injected = 0.150 * len(stalls) + behind_ms / 1e3 * 77
    assert abs(finding.time_lost_s - injected) <= 0.05 * injected, finding


def test_a_rank_slow_for_part_of_the_run_is_found_over_that_span() -> None:
    run = lockstep(4, 200, extra_ms=lambda r, k: 3.0 if r == 1 and k >= 100 else 0.0)
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert finding.ranks == (1,) and finding.severity == "warning"
    first, last = map(int, finding.evidence["straggling_steps"].split("-"))
    assert 90 <= first <= 110 and last == 199
    # the what-if over the 100 steps where it happened, not a fraction of them
    assert abs(finding.time_lost_s - 0.003 * 100) <= 0.2 * 0.003 * 100


def test_hiccups_that_fall_on_every_rank_alike_are_no_straggler() -> None:
    """A busy shared machine: each rank is held up now and then, at random."""
    rng = np.random.default_rng(7)
    hiccups = {
        (r, k): float(rng.uniform(2, 20))
        for r in range(3)
        for k in range(80)
        if rng.random() < 0.08
    }
    run = lockstep(3, 80, extra_ms=lambda r, k: hiccups.get((r, k), 0.0))
    assert [f for f in analyze(run).findings if f.severity != "info"] == []


def test_row_medians_are_numpys_own_without_its_loop() -> None:
    """nan_median_rows stands in for np.nanmedian(axis=1) in the analyzers: the same
    numbers, rows with holes and rows of nothing but NaN included."""
    rng = np.random.default_rng(3)
    for shape in ((5, 700), (64, 2000), (7, 4), (3, 1)):
        values = rng.lognormal(size=shape)
        np.testing.assert_array_equal(nan_median_rows(values), np.median(values, axis=1))
        values[rng.random(shape) < 0.2] = np.nan
        values[1] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmedian(values, axis=1)
        np.testing.assert_array_equal(nan_median_rows(values), expected)


@pytest.mark.parametrize("contended", [True, False])
def test_a_slowdown_in_communication_is_the_cpus_where_the_threads_wait_for_them(
    contended: bool,
) -> None:
    # From step 60 every rank computes 4 ms more and its collectives take 6 ms more.
    # With the stepping threads waiting 8 ms more a step in a run queue (no more CPU),
    # the CPUs were taken (gloo's transfers need them too); without that wait, the link.
    def threads(rank: int, step: int) -> tuple[float, float]:
        return 9.0, 8.1 if contended and step >= 60 else 0.1

    run = lockstep(
        3,
        120,
        extra_ms=lambda r, k: 4.0 if k >= 60 else 0.0,
        transfer_ms=lambda k: 8.0 if k >= 60 else 2.0,
        thread_ms=threads,
    )
    (slowdown,) = [f for f in analyze(run).findings if f.kind == "slowdown"]
    assert abs(slowdown.evidence["start_step"] - 60) <= 2
    assert (
        slowdown.evidence["growth_ms"]["communication"] > slowdown.evidence["growth_ms"]["compute"]
    )
    assert slowdown.cause == ("host_contention" if contended else "slow_link"), slowdown


def _lost_rank_with_steps() -> RunData:
    """Rank 2 stops after step 6 (killed), the others wait in the next all-reduce."""
    steps, colls = [], []
    for k in range(10):
        for r in range(3):
            if r == 2 and k > 6:
                continue
            steps.append((r, k, k * 10 * MS, (k + 1) * 10 * MS - MS, 0, MS))
            colls.append(
                (r, "all_reduce", 0, k + 1, 4096, k * 10 * MS + 8 * MS, (k + 1) * 10 * MS, k, False)
            )
    stuck = {r: {"op": "all_reduce", "group_name": "0", "seq": 11, "nbytes": 4096} for r in (0, 1)}
    return make_run(3, steps, colls, closed={0: False, 1: False, 2: False}, stuck=stuck)


@pytest.mark.parametrize(
    "build",
    [
        # a straggler with stalls every 10 steps, and slow stretches of the job
        lambda: lockstep(4, 120, extra_ms=lambda r, k: 40.0 if r == 1 and k % 10 == 0 else 0),
        # a job-wide slowdown from step 60, every rank held by its CPU limit
        lambda: lockstep(
            4, 120, thread_ms=lambda r, k: (8.0, 0.5, 30.0 if k >= 60 else 0.0),
            extra_ms=lambda r, k: 30.0 if k >= 60 else 0.0,
        ),
        _lost_rank_with_steps,
    ],
)  # fmt: skip
def test_the_step_grid_made_a_rank_at_a_time_changes_no_finding(build) -> None:
    """`mrcdiag report` reads the step records into their [rank, step] grid a batch of
    ranks at a time, never holding the rows: every finding, and the summary, is the
    same as from the rows held whole."""
    kept = analyze(build())
    run = build()
    builder = StepGridBuilder()
    rank_of_row = run.steps["rank"]
    for rank in sorted(run.ranks, reverse=True):  # batches in any order of ranks
        mine = rank_of_row == rank
        builder.add({k: v[mine] for k, v in run.steps.data.items()})
    run.step_grid = builder.build(np.array(sorted(run.ranks)))
    run.steps = run.steps.where(np.zeros(len(run.steps), dtype=bool))
    gridded = analyze(run)
    assert kept.findings and gridded.findings == kept.findings
    assert gridded.summary.per_rank == kept.summary.per_rank
    assert run.step_grid is None  # used up: the matrices are its arrays


def test_a_change_of_pace_that_brings_noise_with_it_is_slower_and_noise_alone_is_not() -> None:
    rng = np.random.default_rng(3)
    calm = 9.8 + rng.normal(0, 0.5, 80)
    # a co-tenant's bursts: steps of about 20 or 42 ms, as the tenant's loops come and go
    bursts = np.where(rng.random(75) < 0.5, 19.0, 42.0) + rng.normal(0, 1.0, 75)
    assert is_slower(calm, bursts, DEFAULTS)
    # the same noise on both sides, about the same pace: no change
    noisy = 10.0 + np.abs(rng.normal(0, 4.0, 160))
    assert not is_slower(noisy[:80], noisy[80:], DEFAULTS)
    # a few steps of bursts against many calm ones: their median is not known well enough
    assert not is_slower(calm, np.array([9.0, 40.0, 12.0, 38.0, 11.5]), DEFAULTS)


def test_a_slowdown_that_cost_little_is_info_after_the_run_as_it_is_live() -> None:
    # every rank 40% slower for the last 40 steps of 10 ms: 0.16 s lost in all, the size
    # of a shared machine's moods; 3.5 times slower for 60 steps is a fault worth seeing
    small = lockstep(2, 120, extra_ms=lambda r, k: 4.0 if k >= 80 else 0.0)
    (finding,) = [f for f in analyze(small).findings if f.kind == "slowdown"]
    assert finding.severity == "info" and finding.time_lost_s < 0.25, finding
    large = lockstep(2, 120, extra_ms=lambda r, k: 25.0 if k >= 60 else 0.0)
    (finding,) = [f for f in analyze(large).findings if f.kind == "slowdown"]
    assert finding.severity == "critical" and finding.time_lost_s > 1.0, finding


def test_a_findings_evidence_read_from_a_float32_matrix_is_plain_json() -> None:
    # the matrices are float32: a number taken from one straight into the evidence
    # must not stop the live findings.jsonl line or the JSON report from being written
    finding = Finding(
        "straggler", "warning", "host_contention", np.float32(1.25), (1,),
        evidence={"late_ms": np.float32(31.5), "per_window": [np.float32(0.5), np.int64(2)]},
    )  # fmt: skip
    line = json.loads(json.dumps(finding.as_json()))
    assert line["evidence"] == {"late_ms": 31.5, "per_window": [0.5, 2]}
    assert line["time_lost_s"] == 1.25


def test_a_slowdown_that_begins_within_a_stage_stall_is_the_stages() -> None:
    # a pipeline stage stopped now and then from step 9 to 189: every stage waits in its
    # receives, counted as communication, and the job's pace changes at step 17; that
    # slowdown is the stage's, not a slow link. One that begins after the stalls ended,
    # or beside a stall that costs too little to warn, or beside a straggler that is no
    # pipeline stage (the others waited for it as for a peer), is a slowdown of its own.
    from mrcdiag.analyzers.pipeline import STALL_MARK, slowdowns_of_no_stage

    def slowdown(start: int) -> Finding:
        return Finding("slowdown", "critical", "slow_link", 1.8, (0, 1),
                       evidence={"start_step": start})  # fmt: skip

    def straggler(severity: str, **mark: str) -> Finding:
        return Finding("straggler", severity, "unknown", 0.8, (1,),
                       evidence={"straggling_steps": "9-189", **mark})  # fmt: skip

    stall = straggler("critical", **{STALL_MARK: "receives"})
    assert slowdowns_of_no_stage([slowdown(17)], [stall]) == []
    assert slowdowns_of_no_stage([slowdown(195)], [stall]) == [slowdown(195)]
    quiet = straggler("info", **{STALL_MARK: "receives"})
    assert slowdowns_of_no_stage([slowdown(17)], [quiet]) == [slowdown(17)]
    assert slowdowns_of_no_stage([slowdown(17)], [straggler("critical")]) == [slowdown(17)]


def _stopped(run, rates: dict[int, float], seconds: int = 10) -> None:  # noqa: ANN001
    """The node agent's count of each rank's stopped seconds, at `rates` (s/s)."""
    rows = [
        (t * 1_000_000_000, "mrcdiag_rank_stopped_seconds_total", f"rank={r},local_rank={r}",
         rate * t)
        for t in range(seconds + 1)
        for r, rate in rates.items()
    ]  # fmt: skip
    run.node_samples["h0"] = node_samples(rows)


def test_a_rank_stopped_inside_collectives_is_the_straggler_the_agent_saw_stopped() -> None:
    # rank 3 stopped 200 ms every 10th step inside the all_reduce: every rank ends it late
    # together and none arrives late; only the agent's count of its stops tells (2 s of
    # the run's 3.2 s)
    run = lockstep(4, 100, transfer_ms=lambda k: 200.0 if k % 10 == 5 else 2.0)
    assert not [f for f in analyze(run).findings if f.kind == "straggler"]
    _stopped(run, {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.6})
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert finding.ranks == (3,) and finding.cause == "unknown", finding
    assert finding.severity in ("warning", "critical"), finding
    assert finding.evidence["stopped_s_per_s"] == 0.6
    assert "stopped 60% of the time" in finding.summary
    stalls_s = 0.198 * len([k for k in range(5, 100) if k % 10 == 5])
    assert 0.5 * stalls_s <= finding.time_lost_s <= 1.05 * stalls_s, finding


def test_every_rank_stopped_alike_blames_none() -> None:
    # the whole job suspended (Ctrl-Z, a scheduler suspending every rank): no rank's fault
    run = lockstep(4, 100, transfer_ms=lambda k: 200.0 if k % 10 == 5 else 2.0)
    _stopped(run, dict.fromkeys(range(4), 0.15))
    assert not [f for f in analyze(run).findings if f.kind == "straggler"]


@pytest.mark.parametrize(("stopped", "cause"), [(0.4, "unknown"), (0.05, "slow_compute")])
def test_a_late_rank_seen_stopped_has_one_finding_that_says_so(stopped: float, cause: str) -> None:
    # its thread's clocks say heavier work; where its stops account for half of what it
    # cost or more, they are the cause
    run = lockstep(
        4, 60, compute_ms={0: 10, 1: 10, 2: 10, 3: 30},
        thread_ms=lambda r, k: ((29.0 if r == 3 else 9.0), 0.5),
    )  # fmt: skip
    _stopped(run, {0: 0.0, 1: 0.0, 2: 0.0, 3: stopped})
    (finding,) = [f for f in analyze(run).findings if f.kind == "straggler"]
    assert finding.ranks == (3,) and finding.cause == cause, finding
    said = f"stopped {100 * stopped:.0f}% of the time"
    assert "holds its peers up" in finding.summary and said in finding.summary
    assert finding.evidence["stopped_s_per_s_others"] == 0.0


def test_a_rank_seen_stopped_explains_the_jumps_in_the_jobs_pace() -> None:
    from mrcdiag.analyzers.stopped import unexplained_slowdowns

    slowdown = Finding("slowdown", "critical", "host_contention", 1.0, (0, 1), (),
                       evidence={"start_step": 155})  # fmt: skip
    stopped = Finding("straggler", "critical", "unknown", 5.0, (1,), ("vm",),
                      evidence={"stopped_s_per_s": 0.4})  # fmt: skip
    late = Finding("straggler", "critical", "unknown", 5.0, (1,), ("vm",))
    assert unexplained_slowdowns([slowdown], [stopped]) == []
    assert unexplained_slowdowns([slowdown], [late]) == [slowdown]
    info = Finding("straggler", "info", "unknown", 0.1, (1,), ("vm",),
                   evidence={"stopped_s_per_s": 0.02})  # fmt: skip
    assert unexplained_slowdowns([slowdown], [info]) == [slowdown]


def _job_stalls(run) -> list[Finding]:  # noqa: ANN001
    return [f for f in analyze(run).findings if f.cause == "job_stalls"]


def test_every_rank_pausing_every_tenth_step_is_a_job_wide_stall_with_its_cost() -> None:
    # every rank computes 120 ms more every 10th step (an evaluation on all ranks)
    def clocks(rank: int, step: int) -> tuple[float, float]:
        return (10.0 + (120.0 if step % 10 == 5 else 0.0)), 0.5

    run = lockstep(3, 100, extra_ms=lambda r, k: 120.0 if k % 10 == 5 else 0.0, thread_ms=clocks)
    (stall,) = _job_stalls(run)
    assert stall.kind == "idle_compute" and stall.severity == "info" and stall.ranks == (0, 1, 2)
    assert (stall.evidence["pattern"], stall.evidence["every_steps"]) == ("periodic", 10)
    events = len([k for k in range(5, 100) if k % 10 == 5])
    assert abs(stall.time_lost_s - 0.120 * events) <= 0.15 * 0.120 * events, stall
    assert "computes 120 ms more" in stall.summary
    assert not [f for f in analyze(run).findings if f.severity != "info"]


def test_a_job_wide_stall_off_the_cpu_is_said_to_be_io_or_a_sleep() -> None:
    run = lockstep(
        3, 100, extra_ms=lambda r, k: 120.0 if k % 10 == 5 else 0.0,
        thread_ms=lambda r, k: (10.0, 0.5),
    )  # fmt: skip
    (stall,) = _job_stalls(run)
    assert "off the CPU" in stall.summary


def test_one_rank_stalling_is_its_straggler_finding_not_a_job_wide_stall() -> None:
    from mrcdiag.analyzers.job_stalls import find_job_stalls

    run = lockstep(3, 100, extra_ms=lambda r, k: 120.0 if r == 1 and k % 10 == 5 else 0.0)
    analysis = analyze(run)
    assert find_job_stalls(analysis.matrix, [], DEFAULTS) == []  # the others only waited


def test_a_clean_run_has_no_job_wide_stall() -> None:
    assert _job_stalls(lockstep(3, 100, noise_ms=1.0)) == []


@pytest.mark.parametrize("held_ms", [0.0, 100.0])
def test_collectives_long_now_and_then_are_one_ranks_where_its_limit_held_it(
    held_ms: float,
) -> None:
    # every 10th step every rank's all_reduce takes 100 ms longer: a large collective,
    # or rank 0's container limit holding it (and so everyone) inside the collective
    def clocks(rank: int, step: int) -> tuple[float, float, float]:
        held = held_ms if rank == 0 and step % 10 == 5 else 0.0
        return 10.0, 0.5 + held, held

    run = lockstep(3, 100, transfer_ms=lambda k: 102.0 if k % 10 == 5 else 2.0, thread_ms=clocks)
    stalls = _job_stalls(run)
    if held_ms:
        assert stalls == []
    else:
        (stall,) = stalls
        assert "more in collectives" in stall.summary
