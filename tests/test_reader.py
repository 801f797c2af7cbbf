"""Reading a run back: every rank's rows, moved to rank 0's clock, whatever form the
reader keeps them in (one array per column, or one value broadcast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.ipc as ipc
import pytest

from mrcdiag.store import layout, reader, schema
from mrcdiag.store.reader import is_single, read_run
from mrcdiag.store.synthetic import SyntheticSpec, write_synthetic_run
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
