"""Per rank and step: how late the rank arrived, how long it waited, what it cost others.

For each collective instance every member's arrival is compared with the *other*
members' arrivals (leave-one-out, so that two ranks do not cancel out):
  late   = arrival - median(others)        how far behind the pack the rank was
  excess = max(0, arrival - max(others))   how much later the collective started because
                                           of this rank alone (the what-if saving)
  wait   = last arrival - arrival          time the rank sat waiting for peers
  own    = gap - median(others' gaps)      how much longer the rank's own work took, where
                                           gap = arrival - the rank's latest completion
                                           of a collective before it
A rank that arrives late only because its previous collective finished late (a ring
whose slow link delivers to it last) has a late arrival but no own lateness: it is not a
straggler, the link is. The gap needs no clock alignment either: both ends are read on
the rank's own clock.
Values are folded into rank x step matrices. Within a step, synchronous collectives add
up (each is its own meeting point) while asynchronous ones overlap (DDP's bucket
all-reduces, FSDP's prefetches): each asynchronous instance is judged on its own and the
step takes their median, so that one bucket's jitter does not make every rank of a clean
job look behind (the maximum over a step's buckets did, on both ranks of a clean Hugging
Face or Lightning run).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from mrcdiag.analyzers.executor import INLINE
from mrcdiag.analyzers.instances import CHUNK_RECORDS, Instances, median_by, member_blocks
from mrcdiag.store.reader import Columns, RunData
from mrcdiag.store.schema import SOURCE_CODE
from mrcdiag.store.step_grid import GRID_DTYPE, StepGrid, StepSpans, step_grid_of_rows

# The [rank, step] matrices' numbers: seconds in float32 as the step grid's (60 ns of a
# 1 s step); half of float64's memory, which at 16384 ranks x 2000 steps is 1.3 GB over
# the ten of them. Everything is worked out in float64 before it is stored; sums over a
# matrix's rows or columns are numpy's pairwise ones.
MATRIX_DTYPE = GRID_DTYPE


@dataclass
class RankStepMatrix:
    """Dense [rank_index, step] arrays of MATRIX_DTYPE; NaN where a rank has no such
    step."""

    ranks: np.ndarray  # global rank of each row
    steps: np.ndarray  # step index of each column
    duration_s: np.ndarray
    data_wait_s: np.ndarray
    blocked_s: np.ndarray  # in collectives as seen by the training thread
    late_s: np.ndarray
    own_late_s: np.ndarray  # lateness of the rank's own work since its last completion
    excess_s: np.ndarray
    wait_s: np.ndarray
    has_instances: np.ndarray  # bool: a collective of this rank fell in this step
    # when each step began and ended over the ranks, each rank's last step: what is
    # needed of the step rows besides these matrices
    spans: StepSpans
    # the stepping thread on a CPU, and waiting in a run queue for one (NaN: not known)
    cpu_s: np.ndarray | None = None
    cpu_wait_s: np.ndarray | None = None
    # how long the rank's cgroup was held by its CPU limit in each step, within the
    # time its thread was off the CPU (NaN: not known); None where no step of the run
    # knows it
    cpu_throttled_s: np.ndarray | None = None
    # the device allocator: retries in each step (NaN: not known), and each rank's
    # highest reserved memory as a share of its device's (NaN: not known); None without
    # any device figure in the run
    alloc_retries: np.ndarray | None = None
    mem_peak_of_total: np.ndarray | None = None

    def row(self, rank: int) -> int:
        return int(np.searchsorted(self.ranks, rank))


def _leave_one_out(arrivals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """median and max of the others, for a dense [instances, members] array (no NaN)."""
    n = arrivals.shape[1]
    if n > 8:  # one member hardly moves the median of many
        # one selection gives the two largest and the middle: no sort of every row
        mid = sorted({(n - 1) // 2, n // 2, n - 2, n - 1})
        order = np.partition(arrivals, mid, axis=1)
        top, second = order[:, -1:], order[:, -2:-1]
        med = (order[:, (n - 1) // 2] + order[:, n // 2])[:, None] / 2.0
        del order
        max_others = np.where(arrivals >= top, second, top)
        return np.broadcast_to(med, arrivals.shape), max_others
    order = np.sort(arrivals, axis=1)
    top, second = order[:, -1:], order[:, -2:-1] if n > 1 else order[:, -1:]
    max_others = np.where(arrivals >= top, second, top)
    med_others = np.empty_like(arrivals, dtype=np.float64)
    for j in range(n):
        med_others[:, j] = np.median(np.delete(arrivals, j, axis=1), axis=1)
    return med_others, max_others


def _gap_ns(rec: Columns) -> np.ndarray:
    """Per record: its arrival less the rank's latest collective completion at or before
    it (NaN when it has none), i.e. how long the rank worked on what led here since it
    was free to start it. float32: 6 ns of a 100 ms gap, half the memory of a record's
    float64 (130 MB at 16384 ranks x 2000 steps).

    Rank by rank (the records of a run come rank after rank; others are put so by one
    stable sort): the rank's completions sorted once, each arrival finds the last one
    not after it by binary search; the difference is taken in int64, exact."""
    n = len(rec)
    gap = np.full(n, np.nan, dtype=np.float32)
    if n == 0:
        return gap
    rank = rec["rank"]
    order = None if bool(np.all(rank[1:] >= rank[:-1])) else np.argsort(rank, kind="stable")
    ranks = rank if order is None else rank[order]
    arrive = rec["t_arrive_ns"] if order is None else rec["t_arrive_ns"][order]
    end = rec["t_end_ns"] if order is None else rec["t_end_ns"][order]
    bounds = np.flatnonzero(np.diff(ranks)) + 1
    out = gap if order is None else np.full(n, np.nan, dtype=np.float32)
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, n], strict=True):
        ends = end[lo:hi]
        ends = np.sort(ends[ends > 0])
        if not len(ends):
            continue
        at = np.searchsorted(ends, arrive[lo:hi], side="right") - 1
        since = arrive[lo:hi] - ends[np.maximum(at, 0)]
        out[lo:hi] = np.where(at >= 0, since, np.nan)
    if order is not None:
        gap[order] = out
    return gap


def _blocks(inst: Instances) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows of inst.records, arrivals as [instance, member] floats) for each size of
    complete instance: instances of n members, members by rank, a chunk at a time (its
    temporaries of the leave-one-out are tens of MB: a dozen of the run's size, in two
    threads at once, were the report's peak, 3 GB at 16384 ranks x 2000 steps)."""
    arrive = inst.records["t_arrive_ns"]
    for _, members in member_blocks(inst):
        if members.shape[1] < 2:
            continue
        order = members.ravel()
        yield order, arrive[order].astype(np.float64).reshape(members.shape)


def arrival_lateness(inst: Instances) -> tuple[np.ndarray, np.ndarray]:
    """(late_ns, excess_ns) per record of inst.records, in float32 (worked out in
    float64); NaN for incomplete instances."""
    late = np.full(len(inst.records), np.nan, dtype=np.float32)
    excess = np.full(len(inst.records), np.nan, dtype=np.float32)
    for order, arrivals in _blocks(inst):
        med_others, max_others = _leave_one_out(arrivals)
        late[order] = (arrivals - med_others).ravel()
        excess[order] = np.maximum(arrivals - max_others, 0).ravel()
    return late, excess


def own_lateness(inst: Instances) -> np.ndarray:
    """own_late_ns per record of inst.records, in float32 (NaN for incomplete instances):
    its gap against the others' gaps; its lateness where a member has no earlier
    completion."""
    rec = inst.records
    own = np.full(len(rec), np.nan, dtype=np.float32)
    if inst.n_instances == 0:
        return own
    gap = _gap_ns(rec)
    for order, arrivals in _blocks(inst):
        n = arrivals.shape[1]
        gaps = gap[order].astype(np.float64).reshape(-1, n)
        known = ~np.isnan(gaps).any(axis=1)
        gap_others, _ = _leave_one_out(np.where(known[:, None], gaps, 0.0))
        mine = gaps - gap_others
        if not known.all():  # the instance's lateness (leave-one-out works row by row)
            med_others, _ = _leave_one_out(arrivals[~known])
            mine[~known] = arrivals[~known] - med_others
        own[order] = mine.ravel()
    return own


@dataclass(frozen=True)
class StepMatrices:
    """The [rank, step] matrices that come from the step records alone (and DDP's wait):
    built apart from the collective instances, and at the same time."""

    ranks: np.ndarray
    duration_s: np.ndarray
    data_wait_s: np.ndarray
    blocked_s: np.ndarray
    cpu_s: np.ndarray
    cpu_wait_s: np.ndarray
    cpu_throttled_s: np.ndarray | None
    alloc_retries: np.ndarray | None
    mem_peak_of_total: np.ndarray | None
    spans: StepSpans


def step_matrices(run: RunData) -> StepMatrices:
    """From run.step_grid where the reader made it (used up here: the matrices are its
    arrays, changed in place), else from run.steps' rows (kept)."""
    ranks = np.array(sorted(run.ranks), dtype=np.int64)
    grid, run.step_grid = run.step_grid, None
    if grid is None:
        grid = step_grid_of_rows(run.steps, ranks)
    if grid is None:  # no step rows: empty matrices
        grid = StepGrid.empty(ranks)
    arrays = grid.arrays
    duration = arrays["duration_s"]
    cpu = arrays["cpu_s"]
    throttled = arrays.get("cpu_throttled_s")
    if throttled is not None:
        # The kernel sums a cgroup's held time over the CPUs it was held on (two ranks
        # of one pod, held together for 70 ms, read 140 ms): the rank was held no longer
        # than its thread was off the CPU in that step (where its CPU time is known).
        np.minimum(throttled, np.maximum(duration - np.nan_to_num(cpu), 0), out=throttled)
    blocked = arrays["comm_s"]
    ddp_wait = _ddp_wait_s(run, ranks, duration.shape)
    if ddp_wait is not None:
        blocked += ddp_wait
    del ddp_wait
    counts = arrays.get("alloc_retries_count")
    retries = None if counts is None else np.diff(counts, axis=1, prepend=counts[:, :1])
    return StepMatrices(
        ranks,
        duration,
        arrays["data_wait_s"],
        blocked,
        cpu,
        arrays["cpu_wait_s"],
        throttled,
        retries,
        grid.mem_peak_of_total,
        grid.spans,
    )


def rank_step_matrix(
    run: RunData,
    inst: Instances,
    from_steps: StepMatrices | None = None,
    beside: Executor = INLINE,
) -> RankStepMatrix:
    """`from_steps`: step_matrices(run), where already made; `beside`: where the own
    lateness is worked out meanwhile."""
    sm = from_steps if from_steps is not None else step_matrices(run)
    ranks = sm.ranks
    shape = sm.duration_s.shape
    n_steps = shape[1]
    rec = inst.records
    own_job = beside.submit(own_lateness, inst)
    late, excess = arrival_lateness(inst)
    step = rec["step"]
    valid = (step >= 0) & (step < n_steps) & ~np.isnan(late)
    every = bool(valid.all())

    def pick(values: np.ndarray) -> np.ndarray:
        """The values of the records that fall in a step of the matrix (no copy where
        all do)."""
        return values if every else values[valid]

    n_cells = shape[0] * shape[1]
    picked_rank, picked_step = pick(rec["rank"]), pick(step)
    n_picked = len(picked_step)
    # Where there is one record a cell, in order (a run's records come rank after rank,
    # step after step, and a DDP job of one bucket has one a step), each record is its
    # cell's value, its sum and its median alike, put in place without a sum over every
    # cell (a record's values are known where its arrival lateness is: `valid`). Where
    # every cell has its record as well, the records are the matrix, row by row: that is
    # checked a chunk at a time, so that their cells need not be held at all.
    every_cell, last_cell = n_picked == n_cells, -1
    for lo in range(0, n_picked if every_cell else 0, CHUNK_RECORDS):
        part = slice(lo, lo + CHUNK_RECORDS)
        cells = row_of(ranks, picked_rank[part]) * n_steps + picked_step[part]
        every_cell = int(cells[0]) > last_cell and bool((cells[1:] > cells[:-1]).all())
        if not every_cell:
            break
        last_cell = int(cells[-1])
    has = np.ones(shape, dtype=bool) if every_cell else np.zeros(shape, dtype=bool)
    if every_cell:
        cells, one_per_cell = np.zeros(0, dtype=np.int64), True
    else:
        cells = row_of(ranks, picked_rank) * n_steps + picked_step
        has.ravel()[cells] = True
        one_per_cell = bool((cells[1:] > cells[:-1]).all())
    del picked_rank, picked_step
    is_async = pick(rec["is_async"])
    if every_cell:
        sync_cells, async_cells, is_async = cells[:0], cells[:0], None
    elif one_per_cell or not is_async.any():
        sync_cells, async_cells, is_async = cells, cells[:0], None
    else:
        sync_cells, async_cells = cells[~is_async], cells[is_async]
    del cells
    # where no cell holds two asynchronous records, each one is its cell's median
    one_each = not len(async_cells) or np.bincount(async_cells, minlength=n_cells).max() <= 1

    def fold(per_record_ns: np.ndarray, absent: float, own_array: bool = False) -> np.ndarray:
        """`own_array`: per_record_ns is this function's to change (made here, and let
        go by the caller): where the records are the matrix it becomes the matrix, in
        place, instead of a copy beside it."""
        if every and every_cell and own_array and per_record_ns.dtype == MATRIX_DTYPE:
            return np.divide(per_record_ns, 1e9, out=per_record_ns).reshape(shape)
        seconds = pick(per_record_ns) / 1e9
        if every_cell:
            return seconds.astype(MATRIX_DTYPE, copy=False).reshape(shape)
        if one_per_cell:
            out = np.full(shape, absent, dtype=MATRIX_DTYPE)
            out.ravel()[sync_cells] = seconds
            return out
        sync_s = seconds if is_async is None else seconds[~is_async]
        # (bincount gives int64 where there is nothing to sum)
        summed = np.bincount(sync_cells, sync_s, n_cells).astype(np.float64, copy=False)
        del sync_s
        if is_async is not None and one_each:
            summed[async_cells] += np.nan_to_num(seconds[is_async])
        elif is_async is not None:
            summed += np.nan_to_num(median_by(async_cells, seconds[is_async], n_cells))
        del seconds
        out = summed.reshape(shape).astype(MATRIX_DTYPE)
        del summed
        out[~has] = absent
        return out

    late_m = fold(late, np.nan, own_array=True)
    del late
    excess_m = fold(excess, np.nan, own_array=True)
    del excess
    wait = fold(inst.wait_ns, 0.0)
    own_m = fold(own_job.result(), np.nan, own_array=True)
    return RankStepMatrix(
        ranks=ranks,
        steps=np.arange(n_steps),
        duration_s=sm.duration_s,
        data_wait_s=sm.data_wait_s,
        blocked_s=sm.blocked_s,
        late_s=late_m,
        own_late_s=own_m,
        excess_s=excess_m,
        wait_s=wait,
        has_instances=has,
        cpu_s=sm.cpu_s,
        cpu_wait_s=sm.cpu_wait_s,
        cpu_throttled_s=sm.cpu_throttled_s,
        alloc_retries=sm.alloc_retries,
        mem_peak_of_total=sm.mem_peak_of_total,
        spans=sm.spans,
    )


def row_of(ranks: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Each value of `rank` as its row in the sorted `ranks` (every value is one of them):
    a table lookup, not a binary search per record."""
    if not len(ranks) or not len(rank):
        return np.zeros(len(rank), dtype=np.int64)
    table = np.zeros(int(ranks.max()) + 1, dtype=np.int64)
    table[ranks] = np.arange(len(ranks))
    return table[rank]


def _ddp_wait_s(run: RunData, ranks: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """Per rank and step, how long the training thread waited at the end of backward for
    DDP's all-reduces (None: the run has no DDP all-reduce). DDP waits for them in C++,
    out of the hook's sight; its last bucket is handed over when backward's compute is
    done, so from that all-reduce's arrival to the completion of the last one the thread
    can only wait. Worked out a stretch of whole ranks at a time (records come rank
    after rank): no array of the run's size but the selection."""
    c = run.collectives
    if not len(c) or not shape[1] or not len(ranks):
        return None
    sel = (c["source"] == SOURCE_CODE["ddp"]) & (c["step"] >= 0) & (c["step"] < shape[1])
    if not sel.any():
        return None
    known = np.zeros(max(int(ranks.max()), int(c["rank"].max())) + 1, dtype=bool)
    known[ranks] = True
    sel &= known[c["rank"]]
    if not sel.any():
        return None
    out = np.zeros(shape, dtype=MATRIX_DTYPE)
    rank = c["rank"]
    in_order = bool((rank[1:] >= rank[:-1]).all())
    n, lo = len(c), 0
    while lo < n:
        # a stretch that ends where a rank's records end: no cell is split between two
        hi = n if not in_order else min(lo + CHUNK_RECORDS, n)
        if hi < n:
            hi = int(np.searchsorted(rank, rank[hi - 1], side="right"))
        mine = np.flatnonzero(sel[lo:hi]) + lo
        lo = hi
        if not len(mine):
            continue
        cell = row_of(ranks, rank[mine]) * shape[1] + c["step"][mine]
        cells, last_arrive, last_end = _max_by_cell(
            cell, c["t_arrive_ns"][mine], c["t_end_ns"][mine]
        )
        out.ravel()[cells] = np.maximum(last_end - last_arrive, 0) / 1e9
    return out


def _max_by_cell(
    cell: np.ndarray, arrive: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(each cell with records, once; the latest arrival and the latest end of its
    records). A run's records come rank by rank, step after step, so their cells rarely
    go back: then each cell's values are one run of rows and one pass finds every
    maximum; otherwise one unbuffered scatter does."""
    rises = np.diff(cell)
    if bool((rises > 0).all()):  # one record a cell (one bucket a step)
        return cell, arrive, end
    if bool((rises >= 0).all()):
        starts = np.r_[0, np.flatnonzero(rises) + 1]
        return (
            cell[starts],
            np.maximum.reduceat(arrive, starts),
            np.maximum.reduceat(end, starts),
        )
    cells, at = np.unique(cell, return_inverse=True)
    last_arrive = np.full(len(cells), np.iinfo(np.int64).min, dtype=np.int64)
    last_end = np.full(len(cells), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last_arrive, at, arrive)
    np.maximum.at(last_end, at, end)
    return cells, last_arrive, last_end
