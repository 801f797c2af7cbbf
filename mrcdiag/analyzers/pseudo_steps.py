"""Steps for runs that never marked one (no torch optimizer, no `mrcdiag.step()`).

Without steps the per-step analyses would have nothing to work on, so each call of the
busiest collective of the widest group becomes a step boundary: step k of a rank runs
from the end of its (k-1)th such collective to the end of its kth. For a training loop
that is one step per iteration or per micro-batch; either way ranks line up.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mrcdiag.store.reader import Columns, RunData
from mrcdiag.store.schema import OP_CODE, POINT_TO_POINT_OPS, STEP_MEMORY_FIELDS

_P2P = [OP_CODE[n] for n in POINT_TO_POINT_OPS]


def with_pseudo_steps(run: RunData) -> RunData:
    coll = run.collectives
    if len(run.steps) or run.step_grid is not None or not len(coll):
        return run
    usable = ~np.isin(coll["op"], _P2P) & (coll["t_end_ns"] > 0)
    if not usable.any():
        return run
    widest = max(range(len(run.groups)), key=lambda g: run.groups[g].size)
    in_group = usable & (coll["group"] == widest)
    ops, counts = np.unique(coll["op"][in_group], return_counts=True)
    if not len(ops):
        return run
    marker = in_group & (coll["op"] == ops[np.argmax(counts)])
    rows = {name: [] for name in ("step", "t_start_ns", "t_end_ns", "rank")}
    step_of_record = np.full(len(coll), -1, dtype=np.int32)
    for rank in run.ranks:
        mine = np.flatnonzero(marker & (coll["rank"] == rank))
        mine = mine[np.argsort(coll["seq"][mine])]
        if not len(mine):
            continue
        ends = coll["t_end_ns"][mine]
        starts = np.r_[coll["t_arrive_ns"][mine[0]], ends[:-1]]
        k = np.arange(len(mine), dtype=np.int32)
        rows["step"].append(k)
        rows["t_start_ns"].append(starts)
        rows["t_end_ns"].append(ends)
        rows["rank"].append(np.full(len(mine), rank, dtype=np.int32))
        # every record of this rank belongs to the step whose end follows its arrival
        all_mine = np.flatnonzero(coll["rank"] == rank)
        index = np.searchsorted(ends, coll["t_arrive_ns"][all_mine], side="left")
        step_of_record[all_mine] = np.minimum(index, len(mine) - 1)
    if not rows["step"]:
        return run
    n = sum(len(a) for a in rows["step"])
    steps = Columns(
        {
            "step": np.concatenate(rows["step"]),
            "t_start_ns": np.concatenate(rows["t_start_ns"]),
            "t_end_ns": np.concatenate(rows["t_end_ns"]),
            "data_wait_ns": np.zeros(n, dtype=np.int64),
            "comm_ns": np.zeros(n, dtype=np.int64),
            "n_collectives": np.ones(n, dtype=np.int32),
            "cpu_ns": np.full(n, -1, dtype=np.int64),
            "cpu_wait_ns": np.full(n, -1, dtype=np.int64),
            "cpu_throttled_ns": np.full(n, -1, dtype=np.int64),
            **{name: np.full(n, -1, dtype=np.int64) for name in STEP_MEMORY_FIELDS},
            "rank": np.concatenate(rows["rank"]),
        }
    )
    collectives = Columns({**coll.data, "step": step_of_record})
    note = (
        f"no step was marked (no optimizer.step(), no mrcdiag.step()): steps are the "
        f"calls of {op_name(int(ops[np.argmax(counts)]))} in group "
        f"{run.groups[widest].name}"
    )
    return dataclasses.replace(
        run, steps=steps, collectives=collectives, problems=[*run.problems, note]
    )


def op_name(code: int) -> str:
    from mrcdiag.store.schema import OPS

    return OPS[code]
