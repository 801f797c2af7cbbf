"""The pieces of the live analysis, each on its own: the findings' life and lines, the
online change point, and the window of records (kept, shipped between nodes, resumed)."""

from __future__ import annotations

from pathlib import Path

from mrcdiag.agent.tracker import (
    CHANGED,
    ENDED,
    STARTED,
    FindingTracker,
    Transition,
    shift_steps,
)
from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.settings import DEFAULTS
from mrcdiag.store.synthetic import SyntheticSpec, write_synthetic_run
from mrcdiag.store.window import DirTail, RunWindow, decode_deltas, encode_deltas


def _straggler(severity: str = "warning", rank: int = 1, lost_s: float = 1.0) -> Finding:
    return Finding("straggler", severity, "slow_compute", lost_s, (rank,), ("vm",), "late")


def test_a_finding_gets_a_line_when_it_starts_and_at_most_one_more_per_30_s() -> None:
    tracker = FindingTracker(end_after_s=6, line_every_s=30)
    events = [t.event for t in tracker.update([_straggler()], 100.0, 10, 0.1)]
    assert events == [STARTED]
    assert [t.event for t in tracker.lines_due(100.0)] == [STARTED]
    # worse two seconds later: a change, but the line waits for its 30 s
    assert [t.event for t in tracker.update([_straggler("critical")], 102.0, 12, 0.1)] == [CHANGED]
    assert tracker.lines_due(102.0) == []
    tracker.update([_straggler("critical")], 131.0, 40, 0.1)
    due = tracker.lines_due(131.0)
    assert [(t.event, t.live.finding.severity) for t in due] == [(CHANGED, "critical")]
    # gone: it ends once it has been absent for end_after_s, and says so when due
    assert tracker.update([], 135.0, 44, 0.1) == []
    ended = tracker.update([], 138.0, 47, 0.1)
    assert [t.event for t in ended] == [ENDED] and ended[0].live.ended_step == 47
    assert tracker.lines_due(138.0) == []
    assert [t.event for t in tracker.lines_due(161.0)] == [ENDED]
    assert tracker.lines_due(200.0) == []


def test_time_lost_adds_up_the_new_part_of_each_window() -> None:
    tracker = FindingTracker(end_after_s=6, line_every_s=30)
    tracker.update([_straggler(lost_s=2.0)], 0.0, 60, 1.0)
    for t in range(1, 11):  # each tick the window (2 s lost in it) has a quarter new
        tracker.update([_straggler(lost_s=2.0)], float(t), 60 + t, 0.25)
    (live,) = tracker.findings.values()
    assert abs(live.time_lost_total_s - (2.0 + 10 * 0.5)) < 1e-9


def test_a_windows_steps_are_told_in_the_jobs_own_numbers() -> None:
    f = Finding(
        "straggler", "warning", "slow_compute", 1.0, (1,), ("vm",),
        "rank 1 on vm holds its peers up in steps 12-40, 26.9 ms per step",
        evidence={"straggling_steps": "12-40", "pattern": {"steps": "12-40"}, "start_step": 5},
    )  # fmt: skip
    g = shift_steps(f, 800)
    assert "in steps 812-840," in g.summary
    assert g.evidence["straggling_steps"] == "812-840"
    assert g.evidence["pattern"]["steps"] == "812-840" and g.evidence["start_step"] == 805


def _rows(deltas: list) -> tuple[int, int]:
    return sum(d.collectives.num_rows for d in deltas), sum(d.steps.num_rows for d in deltas)


def test_records_cross_to_another_node_once_each_from_a_cursor(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", SyntheticSpec(ranks=4, steps=30))
    tail = DirTail(run_dir)
    first = decode_deltas(encode_deltas(tail.read_new()))
    assert _rows(first) == (4 * 30, 4 * 30)
    assert {d.meta.rank for d in first} == {0, 1, 2, 3} and all(d.groups for d in first)
    cursor = tail.cursor()
    resumed = DirTail(run_dir)  # as the agent answers a request: no state of its own
    resumed.seek(cursor)
    assert _rows(resumed.read_new()) == (0, 0)
    fresh = DirTail(run_dir)
    fresh.seek({})
    assert _rows(fresh.read_new()) == (4 * 30, 4 * 30)


def test_the_window_keeps_the_last_steps_numbered_from_zero(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", SyntheticSpec(ranks=4, steps=100))
    window = RunWindow(keep_steps=25)
    window.add(DirTail(run_dir).read_new())
    w = window.window()
    assert w.first_step == 75 and w.complete_steps == 25
    assert sorted(set(w.run.steps["step"].tolist())) == list(range(25))
    assert set(w.run.collectives["step"].tolist()) <= set(range(25))
    assert len(w.run.steps) == 4 * 25 and sorted(w.run.ranks) == [0, 1, 2, 3]


def test_an_agent_serves_its_ranks_records_and_samples_to_another_node_once_each(
    tmp_path: Path,
) -> None:
    from mrcdiag.agent.node import NodeAgent
    from mrcdiag.agent.sources import AgentPull

    run_dir = write_synthetic_run(tmp_path / "run", SyntheticSpec(ranks=4, steps=20))
    agent = NodeAgent(
        run_dir, 0, job="j", addr="127.0.0.1", collectors=[], node="node-0000", live=False
    )
    agent.start()
    try:
        agent.recent_samples.append(10, [("mrcdiag_host_load_average", "", 1.5)])
        agent.recent_samples.append(20, [("mrcdiag_host_load_average", "", 2.5)])
        pull = AgentPull(str(agent.base_url))
        assert _rows(pull.read_new()) == (4 * 20, 4 * 20)
        assert _rows(pull.read_new()) == (0, 0)
        samples = pull.read_samples()
        assert samples is not None and samples.column("value").to_pylist() == [1.5, 2.5]
        agent.recent_samples.append(30, [("mrcdiag_host_load_average", "", 3.5)])
        again = pull.read_samples()
        assert again is not None and again.column("value").to_pylist() == [3.5]
    finally:
        agent.stop()


def test_the_live_analysis_reads_the_topology_of_the_nodes_it_sees(tmp_path: Path) -> None:
    from mrcdiag.agent.sources import JobRecords

    records = JobRecords(tmp_path, "a")
    assert records.topology() == {}
    (tmp_path / "nodes" / "a").mkdir(parents=True)
    (tmp_path / "nodes" / "b").mkdir(parents=True)
    (tmp_path / "nodes" / "a" / "topology.json").write_text('{"gpus": [], "pairs": []}')
    (tmp_path / "nodes" / "b" / "topology.json").write_text('{"gpus": [')  # being written
    assert records.topology() == {"a": {"gpus": [], "pairs": []}}


def _fed_in_chunks(run_dir: Path, chunk_steps: int):
    """The run's records as a live analysis would read them while the job ran:
    `chunk_steps` more steps of every rank per tick, with the clock at the newest."""
    import pyarrow.compute as pc

    from mrcdiag.store.window import RankDelta

    whole = DirTail(run_dir).read_new()
    steps = int(max(pc.max(d.steps["step"]).as_py() for d in whole)) + 1
    for lo in range(0, steps, chunk_steps):
        hi = lo + chunk_steps

        def part(table, lo=lo, hi=hi):
            s = table["step"]
            return table.filter(pc.and_(pc.greater_equal(s, lo), pc.less(s, hi)))

        deltas = [
            RankDelta(
                d.meta, d.groups if lo == 0 else [], d.events if lo == 0 else [],
                part(d.collectives), part(d.steps),
            )
            for d in whole
        ]  # fmt: skip
        newest_ns = max(int(pc.max(d.steps["t_end_ns"]).as_py()) for d in deltas)
        clock_s = (newest_ns + whole[0].meta.monotonic_to_unix_ns) / 1e9
        yield deltas, clock_s


def _live_slowdowns(tmp_path: Path, spec) -> list:
    """Every slowdown transition of a live analysis fed `spec`'s run 10 steps a tick, and
    at the end, the job's end."""
    from mrcdiag.agent.live import LiveAnalysis

    run_dir = write_synthetic_run(tmp_path / "run", spec)
    feed = _fed_in_chunks(run_dir, 10)
    pending: list = []
    now = [0.0]

    def read_new() -> list:
        deltas, now[0] = next(feed, ([], now[0]))
        return deltas

    live = LiveAnalysis(read_new, job="j", clock=lambda: now[0])
    out = []
    for _ in range(spec.steps // 10 + 1):
        pending = live.tick()
        out += [t for t in pending if t.live.finding.kind == "slowdown"]
    live.finish()
    return out + [
        Transition(ENDED, x) for x in live.tracker.findings.values() if x.finding.kind == "slowdown"
    ]


def test_a_slowdown_that_deepens_is_placed_at_the_change_that_matters_now(
    tmp_path: Path,
) -> None:
    # a shared machine's pace drifts by a fifth at step 103; a fault makes every rank
    # four times slower at 200: the finding a person reads is the second, with the
    # first in its evidence and the time lost counted from the pace before both
    spec = SyntheticSpec(ranks=4, steps=320, noise=0.02, pace_changes=((103, 1.2), (200, 4.0)))
    transitions = _live_slowdowns(tmp_path, spec)
    assert [t.event for t in transitions].count(STARTED) == 1, transitions
    last = transitions[-1].live
    assert abs(last.started_step - 200) <= 3, last.as_json()
    assert last.finding.severity == "critical"
    (earlier,) = last.finding.evidence["earlier_stages"]
    assert abs(earlier["start_step"] - 103) <= 3, earlier
    # the excess over the 110 ms step since 103: 20 ms a step to 200, 300 ms a step after
    expected_s = 97 * 0.020 + 120 * 0.300
    assert 0.9 * expected_s <= last.time_lost_total_s <= 1.1 * expected_s, last.as_json()


def test_a_deeper_stage_that_ends_returns_to_the_slowdown_below_it(tmp_path: Path) -> None:
    spec = SyntheticSpec(
        ranks=4, steps=360, noise=0.02, pace_changes=((100, 1.4), (180, 3.0), (260, 1.4))
    )
    transitions = _live_slowdowns(tmp_path, spec)
    ended = [t for t in transitions[:-1] if t.event == ENDED]
    assert ended == [], ended  # the pace never came back to the first one
    ended = transitions[-1:]
    placed = [t.live.started_step for t in transitions]
    assert abs(placed[0] - 100) <= 3 and any(abs(s - 180) <= 3 for s in placed), placed
    assert abs(ended[0].live.started_step - 100) <= 3, placed


def test_a_slowdown_ends_when_the_pace_comes_back(tmp_path: Path) -> None:
    spec = SyntheticSpec(ranks=4, steps=300, noise=0.02, pace_changes=((100, 1.5), (180, 1.0)))
    transitions = _live_slowdowns(tmp_path, spec)
    events = [(t.event, t.live.started_step, t.live.ended_step) for t in transitions[:-1]]
    assert [e[0] for e in events if e[0] != CHANGED] == [STARTED, ENDED], events
    # it ends once absent for live_end_after_s (in steps of ~110 ms), give or take a tick
    ends_by = 180 + DEFAULTS.live_end_after_s / 0.110 + 2 * 10
    assert abs(events[0][1] - 100) <= 3 and 180 <= events[-1][2] <= ends_by, events
