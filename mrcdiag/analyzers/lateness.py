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

import warnings
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from mrcdiag.analyzers.executor import INLINE
from mrcdiag.analyzers.instances import Instances, median_by
from mrcdiag.analyzers.step_spans import StepSpans, step_spans
from mrcdiag.store.reader import Columns, RunData
from mrcdiag.store.schema import SOURCE_CODE


@dataclass
class RankStepMatrix:
    """Dense [rank_index, step] arrays; NaN where a rank has no such step."""

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


def _ready_ns(rec: Columns) -> np.ndarray:
    """Per record: the rank's latest collective completion at or before its arrival
    (NaN when it has none), i.e. when the rank was free to start the work that led here.

    Rank by rank (the records of a run come rank after rank; others are put so by one
    stable sort): the rank's completions sorted once, each arrival finds the last one
    not after it by binary search."""
    n = len(rec)
    ready = np.full(n, np.nan)
    if n == 0:
        return ready
    rank = rec["rank"]
    order = None if bool(np.all(rank[1:] >= rank[:-1])) else np.argsort(rank, kind="stable")
    ranks = rank if order is None else rank[order]
    arrive = rec["t_arrive_ns"] if order is None else rec["t_arrive_ns"][order]
    end = rec["t_end_ns"] if order is None else rec["t_end_ns"][order]
    bounds = np.flatnonzero(np.diff(ranks)) + 1
    out = np.full(n, np.nan)
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, n], strict=True):
        ends = end[lo:hi]
        ends = np.sort(ends[ends > 0])
        if not len(ends):
            continue
        at = np.searchsorted(ends, arrive[lo:hi], side="right") - 1
        out[lo:hi] = np.where(at >= 0, ends[np.maximum(at, 0)], np.nan)
    if order is None:
        return out
    ready[order] = out
    return ready


def _blocks(inst: Instances) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows of inst.records, arrivals as [instance, member] floats) for each size of
    complete instance: instances of n members as one block, members by rank."""
    rec = inst.records
    for n in np.unique(inst.n_arrived) if inst.n_instances else []:
        if n < 2:
            continue
        order = inst.members(np.flatnonzero(inst.n_arrived == n), int(n)).ravel()
        yield order, rec["t_arrive_ns"][order].astype(np.float64).reshape(-1, n)


def arrival_lateness(inst: Instances) -> tuple[np.ndarray, np.ndarray]:
    """(late_ns, excess_ns) per record of inst.records; NaN for incomplete instances."""
    late = np.full(len(inst.records), np.nan)
    excess = np.full(len(inst.records), np.nan)
    for order, arrivals in _blocks(inst):
        med_others, max_others = _leave_one_out(arrivals)
        late[order] = (arrivals - med_others).ravel()
        excess[order] = np.maximum(arrivals - max_others, 0).ravel()
    return late, excess


def own_lateness(inst: Instances) -> np.ndarray:
    """own_late_ns per record of inst.records (NaN for incomplete instances): its gap
    against the others' gaps; its lateness where a member has no earlier completion."""
    rec = inst.records
    own = np.full(len(rec), np.nan)
    if inst.n_instances == 0:
        return own
    gap = rec["t_arrive_ns"].astype(np.float64) - _ready_ns(rec)
    for order, arrivals in _blocks(inst):
        n = arrivals.shape[1]
        gaps = gap[order].reshape(-1, n)
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


def step_matrices(run: RunData, release_rows: bool = False) -> StepMatrices:
    """`release_rows`: let go of each of run.steps' columns as soon as what is made of
    it is made, and leave run.steps empty (analyze's release_step_rows): the rows go as
    the matrices come, instead of both being held at once."""
    ranks = np.array(sorted(run.ranks), dtype=np.int64)
    steps = run.steps
    n_rows = len(steps)
    n_steps = int(steps["step"].max()) + 1 if n_rows else 0
    shape = (len(ranks), n_steps)
    columns = dict(steps.data)
    if release_rows:
        # new empty columns: a slice of the old would keep their memory
        run.steps = Columns({k: np.empty(0, v.dtype) for k, v in columns.items()})
        del steps

    def take(name: str) -> np.ndarray | None:
        """A column (None where the run has none), let go of here where the rows are
        released."""
        return columns.pop(name, None) if release_rows else columns.get(name)

    rows = row_of(ranks, columns["rank"])
    spans = step_spans(Columns(columns), ranks, rows, n_steps)
    step_cell = rows * n_steps + columns["step"]
    del rows
    take("rank")
    take("step")

    def dense(values: np.ndarray) -> np.ndarray:
        out = np.full(shape, np.nan)
        if n_rows:
            out.ravel()[step_cell] = values
        return out

    def seconds(name: str) -> np.ndarray:
        return dense(take(name) / 1e9)

    def known_s(ns: np.ndarray) -> np.ndarray:  # negative: not known
        return dense(np.where(ns >= 0, ns / 1e9, np.nan))

    duration = dense((take("t_end_ns") - take("t_start_ns")) / 1e9)
    data_wait = seconds("data_wait_ns")
    cpu, cpu_wait = known_s(take("cpu_ns")), known_s(take("cpu_wait_ns"))
    throttled_ns = take("cpu_throttled_ns")
    throttled = (
        known_s(throttled_ns) if throttled_ns is not None and (throttled_ns >= 0).any() else None
    )
    del throttled_ns
    if throttled is not None:
        # The kernel sums a cgroup's held time over the CPUs it was held on (two ranks
        # of one pod, held together for 70 ms, read 140 ms): the rank was held no longer
        # than its thread was off the CPU in that step (where its CPU time is known).
        np.minimum(throttled, np.maximum(duration - np.nan_to_num(cpu), 0), out=throttled)
    blocked = seconds("comm_ns") + _ddp_wait_s(run, ranks, shape)
    alloc_retries, peak_of_total = _device_memory(Columns(columns), dense)
    return StepMatrices(
        ranks,
        duration,
        data_wait,
        blocked,
        cpu,
        cpu_wait,
        throttled,
        alloc_retries,
        peak_of_total,
        spans,
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
    valid = (rec["step"] >= 0) & (rec["step"] < n_steps) & ~np.isnan(late)
    cells = row_of(ranks, rec["rank"][valid]) * n_steps + rec["step"][valid]
    is_async = rec["is_async"][valid]
    n_cells = shape[0] * shape[1]
    sync_cells, async_cells = cells[~is_async], cells[is_async]
    # where no cell holds two asynchronous records, each one is its cell's median
    one_each = not len(async_cells) or np.bincount(async_cells, minlength=n_cells).max() <= 1
    has = np.zeros(shape, dtype=bool)
    has.ravel()[cells] = True
    del cells

    def fold(per_record_ns: np.ndarray, absent: float) -> np.ndarray:
        seconds = per_record_ns[valid] / 1e9
        summed = np.bincount(sync_cells, seconds[~is_async], n_cells).astype(np.float64)
        if one_each:
            summed[async_cells] += np.nan_to_num(seconds[is_async])
        else:
            summed += np.nan_to_num(median_by(async_cells, seconds[is_async], n_cells))
        out = summed.reshape(shape)
        out[~has] = absent
        return out

    late_m = fold(late, np.nan)
    del late
    excess_m = fold(excess, np.nan)
    del excess
    wait = fold(inst.wait_ns, 0.0)
    own_m = fold(own_job.result(), np.nan)
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


def _device_memory(steps: Columns, dense: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Allocator retries per rank and step (from the counts since the process began),
    and each rank's peak reserved memory over its device's; (None, None) where no step
    carries a device figure (CPU jobs, older runs)."""
    retries = steps.data.get("mem_alloc_retries")
    if retries is None or not (retries >= 0).any():
        return None, None
    counts = dense(np.where(retries >= 0, retries, np.nan).astype(np.float64))
    per_step = np.diff(counts, axis=1, prepend=counts[:, :1])
    peak, total = steps.data.get("mem_peak_reserved_bytes"), steps.data.get("mem_total_bytes")
    share = None
    if peak is not None and total is not None:
        ratio = dense(np.where((peak >= 0) & (total > 0), peak / np.maximum(total, 1), np.nan))
        with warnings.catch_warnings():  # ranks without a device have all-NaN rows
            warnings.simplefilter("ignore", RuntimeWarning)
            share = np.nanmax(ratio, axis=1)
    return per_step, share


def row_of(ranks: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Each value of `rank` as its row in the sorted `ranks` (every value is one of them):
    a table lookup, not a binary search per record."""
    if not len(ranks) or not len(rank):
        return np.zeros(len(rank), dtype=np.int64)
    table = np.zeros(int(ranks.max()) + 1, dtype=np.int64)
    table[ranks] = np.arange(len(ranks))
    return table[rank]


def _ddp_wait_s(run: RunData, ranks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Per rank and step, how long the training thread waited at the end of backward for
    DDP's all-reduces. DDP waits for them in C++, out of the hook's sight; its last bucket
    is handed over when backward's compute is done, so from that all-reduce's arrival to
    the completion of the last one the thread can only wait."""
    out = np.zeros(shape)
    c = run.collectives
    if not len(c) or not shape[1] or not len(ranks):
        return out
    sel = (c["source"] == SOURCE_CODE["ddp"]) & (c["step"] >= 0) & (c["step"] < shape[1])
    if not sel.any():
        return out
    known = np.zeros(max(int(ranks.max()), int(c["rank"].max())) + 1, dtype=bool)
    known[ranks] = True
    sel &= known[c["rank"]]
    if not sel.any():
        return out
    every = bool(sel.all())  # a plain DDP job: no copies of its columns

    def pick(name: str) -> np.ndarray:
        return c[name] if every else c[name][sel]

    cell = row_of(ranks, pick("rank")) * shape[1] + pick("step")
    last_arrive = _max_by_cell(cell, pick("t_arrive_ns"), shape)
    last_end = _max_by_cell(cell, pick("t_end_ns"), shape)
    has = np.isfinite(last_arrive)  # set together with last_end
    with np.errstate(invalid="ignore"):  # -inf - -inf: NaN where neither is set
        waited = np.subtract(last_end, last_arrive, out=last_end)
    np.clip(waited, 0, None, out=waited)
    waited /= 1e9
    return np.where(has, waited, out)


def _max_by_cell(cell: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Per cell of a [rank, step] matrix, the largest of its values (-inf: none). A run's
    records come rank by rank, step after step, so their cells rarely go back: then each
    cell's values are one run of rows and one pass finds every maximum; otherwise one
    unbuffered scatter does."""
    out = np.full(shape, -np.inf)
    if not len(cell):
        return out
    rises = np.diff(cell)
    if bool((rises > 0).all()):  # one record a cell (one bucket a step)
        out.ravel()[cell] = values
    elif bool((rises >= 0).all()):
        starts = np.r_[0, np.flatnonzero(rises) + 1]
        out.ravel()[cell[starts]] = np.maximum.reduceat(values, starts).astype(np.float64)
    else:
        np.maximum.at(out.ravel(), cell, values.astype(np.float64))
    return out
