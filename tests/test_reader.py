"""Reading a run back: every rank's rows, moved to rank 0's clock, whatever form the
reader keeps them in (one array per column, or one value broadcast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.ipc as ipc
import pytest

from mrcdiag.analyzers import analyze
from mrcdiag.store import layout, reader, schema
from mrcdiag.store.reader import is_single, read_run
from mrcdiag.store.step_grid import step_grid_of_rows
from mrcdiag.store.synthetic import SyntheticSpec, write_synthetic_run
from mrcdiag.store.tail import MappedPages, read_stream
from mrcdiag.store.writer import StreamTable

OFFSET_NS = {1: 1_000_000, 2: -2_500}  # rank -> its clock's offset to rank 0's


def _file_rows(path: Path) -> dict[str, np.ndarray]:
    """A rank file read straight through pyarrow, not through the reader."""
    table = ipc.open_stream(path.read_bytes()).read_all()
    return {name: table.column(name).to_numpy().copy() for name in table.column_names}


def _rewrite(path: Path, table_schema, columns: dict[str, np.ndarray]) -> None:
    path.unlink()
    table = StreamTable(path, table_schema)
    try:
        table.append_columns(columns)
    finally:
        table.close()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """4 ranks, two of them with clock offsets; rank 3 alone held by a CPU limit, one of
    rank 1's collectives never seen to end (t_end_ns 0), and rank 2 numbering its groups
    its own way (a group of its own first, the world second) with half its records in
    its own group."""
    run = write_synthetic_run(tmp_path / "run", SyntheticSpec(ranks=4, steps=30))
    for rank, offset in OFFSET_NS.items():
        meta_path = layout.rank_dir(run, rank) / layout.RANK_META_FILE
        meta = json.loads(meta_path.read_text())
        meta["clock"]["offset_ns"] = offset
        meta_path.write_text(json.dumps(meta))
    steps_path = layout.rank_dir(run, 3) / layout.STEPS_FILE
    steps = _file_rows(steps_path)
    steps["cpu_throttled_ns"] = np.full(len(steps["step"]), 7_000_000)
    _rewrite(steps_path, schema.STEP_SCHEMA, steps)
    coll_path = layout.rank_dir(run, 1) / layout.COLLECTIVES_FILE
    coll = _file_rows(coll_path)
    coll["t_end_ns"][5] = 0
    _rewrite(coll_path, schema.COLLECTIVE_SCHEMA, coll)
    groups_path = layout.rank_dir(run, 2) / layout.GROUPS_FILE
    world = json.loads(groups_path.read_text().splitlines()[0])
    own = {**world, "index": 0, "name": "own", "ranks": [2]}
    groups_path.write_text(json.dumps(own) + "\n" + json.dumps({**world, "index": 1}) + "\n")
    coll_path = layout.rank_dir(run, 2) / layout.COLLECTIVES_FILE
    coll = _file_rows(coll_path)
    coll["group"] = np.arange(len(coll["group"])) % 2  # own, world, own, ...
    _rewrite(coll_path, schema.COLLECTIVE_SCHEMA, coll)
    return run


@pytest.mark.parametrize("ranks_at_a_time", [1, 3, 1024])
def test_every_row_of_every_rank_is_read_on_rank_0s_clock(
    run_dir: Path, ranks_at_a_time: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the reader joins the ranks' tables a batch at a time: batches of one rank, of
    # some but not all, and of all of them
    monkeypatch.setattr(reader, "_BATCH_PIECES", ranks_at_a_time)
    run = read_run(run_dir)
    assert [g.name for g in run.groups] == ["0", "own"]
    for kind, file_name, times in (
        (run.collectives, layout.COLLECTIVES_FILE, ("t_arrive_ns", "t_end_ns")),
        (run.steps, layout.STEPS_FILE, ("t_start_ns", "t_end_ns")),
    ):
        for rank in range(4):
            written = _file_rows(layout.rank_dir(run_dir, rank) / file_name)
            mine = kind.where(kind["rank"] == rank)
            assert len(mine) == len(written["step"]) > 0
            for name, values in written.items():
                expected = values.astype(mine[name].dtype)
                if name in times:
                    shift = OFFSET_NS.get(rank, 0)
                    expected = np.where(values != 0, values + shift, 0)
                if name == "group":  # global ids: the world first seen (0), rank 2's own 1
                    expected = np.where((rank == 2) & (values == 0), 1, 0)
                np.testing.assert_array_equal(mine[name], expected, err_msg=f"{name} {rank}")
    # the collective whose end was never seen stays unseen, not "ended at the offset"
    ends = run.collectives.where(run.collectives["rank"] == 1)["t_end_ns"]
    assert (ends == 0).sum() == 1


def test_a_column_of_one_value_is_kept_as_that_value(run_dir: Path) -> None:
    run = read_run(run_dir)
    # the same in every row of the run: no memory per row, and it stays so when rows
    # are picked out
    peer = run.collectives["peer"]
    assert is_single(peer) and (peer == -1).all()
    picked = run.collectives.where(run.collectives["rank"] == 2)
    assert is_single(picked["peer"]) and len(picked["peer"]) == 30
    assert len(run.collectives.where(np.array([3, 4]))["peer"]) == 2
    # one value per rank but not the same for all: a real column, each rank's value in
    # its rows
    held = run.steps["cpu_throttled_ns"]
    assert not is_single(held)
    np.testing.assert_array_equal(held, np.where(run.steps["rank"] == 3, 7_000_000, 0))


@pytest.mark.parametrize("ranks_at_a_time", [1, 3, 1024])
def test_the_step_grid_made_as_the_ranks_are_joined_is_the_rows_grid(
    run_dir: Path, ranks_at_a_time: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `mrcdiag report` never holds the step rows: each batch of ranks becomes its rows
    # of the [rank, step] grid as it is joined. It is the grid of the rows read whole,
    # on rank 0's clock, and the file's numbers in seconds.
    monkeypatch.setattr(reader, "_BATCH_PIECES", ranks_at_a_time)
    gridded = read_run(run_dir, step_grid=True)
    assert len(gridded.steps) == 0 and gridded.step_grid is not None
    rows = read_run(run_dir)
    whole = step_grid_of_rows(rows.steps, np.array(sorted(rows.ranks)))
    grid = gridded.step_grid
    assert set(grid.arrays) == set(whole.arrays) >= {"duration_s", "cpu_throttled_s"}
    for name, values in whole.arrays.items():
        np.testing.assert_array_equal(grid.arrays[name], values, err_msg=name)
    for name in ("first_start_ns", "last_end_ns", "last_step"):
        np.testing.assert_array_equal(getattr(grid.spans, name), getattr(whole.spans, name))
    written = _file_rows(layout.rank_dir(run_dir, 1) / layout.STEPS_FILE)
    np.testing.assert_allclose(
        grid.arrays["duration_s"][1], (written["t_end_ns"] - written["t_start_ns"]) / 1e9
    )
    np.testing.assert_array_equal(grid.arrays["cpu_throttled_s"][3], np.float32(0.007))
    # step 0 began first on rank 2, whose clock runs 2.5 us behind rank 0's
    starts = {r: _file_rows(layout.rank_dir(run_dir, r) / layout.STEPS_FILE)["t_start_ns"][0]
              + OFFSET_NS.get(r, 0) for r in range(4)}  # fmt: skip
    assert grid.spans.first_start_ns[0] == min(starts.values())


def test_a_run_read_into_its_step_grid_has_the_findings_of_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a slow rank, and every rank slower from step 150: the same verdicts and summary
    # from the grid made a few ranks at a time as from the rows
    monkeypatch.setattr(reader, "_BATCH_PIECES", 5)
    spec = SyntheticSpec(ranks=24, steps=300, slow_ranks=(7,), slow_factor=1.3,
                         pace_changes=((150, 1.6),))  # fmt: skip
    run_dir = write_synthetic_run(tmp_path / "run", spec)
    from_rows = analyze(read_run(run_dir))
    from_grid = analyze(read_run(run_dir, step_grid=True))
    kinds = {(f.kind, f.ranks) for f in from_rows.findings if f.severity != "info"}
    assert ("straggler", (7,)) in kinds and any(k == "slowdown" for k, _ in kinds)
    assert [f.as_json() for f in from_grid.findings] == [f.as_json() for f in from_rows.findings]
    assert from_grid.summary == from_rows.summary


def test_the_pages_of_a_rank_file_read_so_far_are_let_go_and_read_again(
    tmp_path: Path,
) -> None:
    # the report reads a few columns of thousands of rank files before it joins them:
    # the pages it touched (and the kernel mapped around them) are let go meanwhile,
    # and the table still reads the file's rows after
    path = tmp_path / "collectives.arrow"
    n = 1 << 20
    table = StreamTable(path, schema.COLLECTIVE_SCHEMA)
    try:
        table.append_columns({name: np.arange(n) % 7 for name in schema.COLLECTIVE_SCHEMA.names})
    finally:
        table.close()
    mapped: list[MappedPages] = []
    read = read_stream(path, schema.COLLECTIVE_SCHEMA, [], mapped)
    before = _file_pages_mib()
    total = sum(int(np.asarray(read.column(name)).sum()) for name in read.column_names)
    touched = _file_pages_mib()
    assert touched - before >= 20  # about 32 MiB of columns read
    for pages in mapped:
        pages.drop()
    assert _file_pages_mib() - before < 4
    assert sum(int(np.asarray(read.column(name)).sum()) for name in read.column_names) == total


def _file_pages_mib() -> float:
    """How much of mapped files this process holds in memory (RssFile)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no RssFile in /proc/self/status")
