"""A run's step records as dense [rank, step] arrays instead of rows.

The rows are 56 bytes a rank-step (1.8 GB at 16384 ranks x 2000 steps); the grid holds
what the analysis takes of them, in float32 seconds, 24 to 32 bytes a rank-step, plus
the step spans (each step's first start and last end over the ranks, each rank's last
step). The
reader can build it a batch of ranks at a time as it joins them (read_run's
`step_grid`), so that the rows of the whole run are never held at once; the analysis
builds it from the rows in one batch where the rows are kept (a live window, the
timeline export). One builder serves both, so both give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

NONE = -1  # no rank recorded that step, or the rank recorded no step
# seconds in float32: 60 ns of a 1 s step, far below any threshold and below what the
# records' clocks resolve, at half of float64's memory
GRID_DTYPE = np.float32
# the [rank, step] arrays the grid holds, of every run (NaN where not known)
ALWAYS = ("duration_s", "data_wait_s", "comm_s", "cpu_s", "cpu_wait_s")
# ... and of a run where some step knows them (None otherwise): the cgroup's held time,
# the device allocator's retries counted since the process began
WHERE_KNOWN = ("cpu_throttled_s", "alloc_retries_count")


@dataclass(frozen=True)
class StepSpans:
    """When each step began and ended across the ranks, and each rank's last step: what
    the analyzers need of the step rows besides the grid's arrays (the hang, fabric and
    host-contention analyses)."""

    first_start_ns: np.ndarray  # per step: the earliest start over the ranks (NONE: none)
    last_end_ns: np.ndarray  # per step: the latest end over the ranks (NONE: none)
    ranks: np.ndarray  # sorted global ranks
    last_step: np.ndarray  # per rank of `ranks`: its highest recorded step (NONE: none)

    def span_ns(self, steps: np.ndarray) -> tuple[int, int] | None:
        """(first start, last end) over the steps given, of those some rank recorded;
        None where no rank recorded any of them."""
        steps = steps[(steps >= 0) & (steps < len(self.first_start_ns))]
        starts = self.first_start_ns[steps]
        recorded = starts != NONE
        if not recorded.any():
            return None
        return int(starts[recorded].min()), int(self.last_end_ns[steps][recorded].max())

    def last_step_of(self, rank: int) -> int:
        at = int(np.searchsorted(self.ranks, rank))
        if at < len(self.ranks) and int(self.ranks[at]) == rank:
            return int(self.last_step[at])
        return NONE


@dataclass
class StepGrid:
    """The step records' [rank, step] arrays of GRID_DTYPE, NaN where a rank has no such
    step (or the figure is not known); a batch's grid (StepGridBuilder.add) covers the
    batch's ranks and steps alone."""

    ranks: np.ndarray  # sorted global ranks, one per row
    arrays: dict[str, np.ndarray]  # ALWAYS, and WHERE_KNOWN where some step knows them
    spans: StepSpans
    # per rank: its highest reserved device memory as a share of the device's (NaN: not
    # known); None where no step knows the allocator's retries (CPU jobs, older runs)
    mem_peak_of_total: np.ndarray | None

    @classmethod
    def empty(cls, ranks: np.ndarray) -> StepGrid:
        """The grid of a run without step rows: no step columns."""
        return cls(
            ranks,
            {name: np.empty((len(ranks), 0), dtype=GRID_DTYPE) for name in ALWAYS},
            StepSpans(
                np.empty(0, np.int64),
                np.empty(0, np.int64),
                ranks,
                np.full(len(ranks), NONE, dtype=np.int32),
            ),
            None,
        )


@dataclass
class StepGridBuilder:
    """Takes the step rows a batch at a time (`add`), each batch's ranks wholly in it and
    in no other batch; `build` joins the batches' grids into the run's."""

    blocks: list[StepGrid] = field(default_factory=list)

    def add(self, columns: dict[str, Any]) -> None:
        """`columns`: the step schema's columns and "rank" of a batch of rows, times on
        one clock; a column may be one value for every row (a scalar), and the CPU
        limit's and the device's may be missing (not known)."""
        step = np.asarray(columns["step"])
        n_rows = len(step)
        if not n_rows:
            return

        def column(name: str) -> np.ndarray:
            values = np.asarray(columns.get(name, -1))
            return np.broadcast_to(values, (n_rows,)) if values.ndim == 0 else values

        ranks, rows = _ranks_and_rows(column("rank"))
        n_steps = int(step.max()) + 1
        shape = (len(ranks), n_steps)
        cell = rows * n_steps + step
        # every rank of the batch has every step, in order (as a run's records come):
        # the rows are the grid's cells already
        whole = n_rows == shape[0] * shape[1] and bool((np.diff(cell) == 1).all())

        def dense(values: np.ndarray) -> np.ndarray:
            if whole:
                return values.astype(GRID_DTYPE).reshape(shape)
            out = np.full(shape, np.nan, dtype=GRID_DTYPE)
            out.ravel()[cell] = values
            return out

        def known_s(ns: np.ndarray) -> np.ndarray:  # negative: not known
            out = dense(ns / 1e9)
            unknown = ns < 0
            if unknown.any():
                out.ravel()[cell[unknown]] = np.nan
            return out

        arrays = {
            "duration_s": dense((column("t_end_ns") - column("t_start_ns")) / 1e9),
            "data_wait_s": dense(column("data_wait_ns") / 1e9),
            "comm_s": dense(column("comm_ns") / 1e9),
            "cpu_s": known_s(column("cpu_ns")),
            "cpu_wait_s": known_s(column("cpu_wait_ns")),
        }
        throttled = column("cpu_throttled_ns")
        if (throttled >= 0).any():
            arrays["cpu_throttled_s"] = known_s(throttled)
        retries = column("mem_alloc_retries")
        if (retries >= 0).any():
            arrays["alloc_retries_count"] = dense(np.where(retries >= 0, retries, np.nan))
        peak, total = column("mem_peak_reserved_bytes"), column("mem_total_bytes")
        known = (peak >= 0) & (total > 0)
        share = np.full(len(ranks), np.nan)
        if known.any():
            np.fmax.at(share, rows[known], peak[known] / total[known])
        first = np.full(n_steps, np.iinfo(np.int64).max, dtype=np.int64)
        last = np.full(n_steps, np.iinfo(np.int64).min, dtype=np.int64)
        np.minimum.at(first, step, column("t_start_ns"))
        np.maximum.at(last, step, column("t_end_ns"))
        # of the step column's own type: ufunc.at with another one casts row by row (30x)
        last_step = np.full(len(ranks), NONE, dtype=step.dtype)
        np.maximum.at(last_step, rows, step)
        spans = StepSpans(first, last, ranks, last_step)
        self.blocks.append(StepGrid(ranks, arrays, spans, share))

    def build(self, ranks: np.ndarray) -> StepGrid | None:
        """The grid over `ranks` (sorted; every rank of a batch among them, some perhaps
        with no rows), each batch let go as it is copied; None where no batch had a row."""
        blocks, self.blocks = self.blocks, []
        if not blocks:
            return None
        n_steps = max(len(b.spans.first_start_ns) for b in blocks)
        first = np.full(n_steps, np.iinfo(np.int64).max, dtype=np.int64)
        last = np.full(n_steps, np.iinfo(np.int64).min, dtype=np.int64)
        last_step = np.full(len(ranks), NONE, dtype=blocks[0].spans.last_step.dtype)
        share = np.full(len(ranks), np.nan)
        rows_of = [np.searchsorted(ranks, b.ranks) for b in blocks]
        for b, rows in zip(blocks, rows_of, strict=True):
            n = len(b.spans.first_start_ns)
            np.minimum(first[:n], b.spans.first_start_ns, out=first[:n])
            np.maximum(last[:n], b.spans.last_end_ns, out=last[:n])
            last_step[rows] = b.spans.last_step
            share[rows] = b.mem_peak_of_total
        none = first == np.iinfo(np.int64).max
        first[none] = NONE
        last[none] = NONE
        arrays: dict[str, np.ndarray] = {}
        for name in ALWAYS + WHERE_KNOWN:
            if name not in ALWAYS and not any(name in b.arrays for b in blocks):
                continue
            out = np.full((len(ranks), n_steps), np.nan, dtype=GRID_DTYPE)
            for b, rows in zip(blocks, rows_of, strict=True):
                part = b.arrays.pop(name, None)
                if part is not None:
                    out[rows, : part.shape[1]] = part
            arrays[name] = out
        retries_known = "alloc_retries_count" in arrays
        spans = StepSpans(first, last, ranks, last_step)
        return StepGrid(ranks, arrays, spans, share if retries_known else None)


def step_grid_of_rows(steps: Any, ranks: np.ndarray) -> StepGrid | None:
    """The grid of step rows held whole (reader.Columns: the schema's columns and
    "rank"); None where there are none."""
    builder = StepGridBuilder()
    builder.add(dict(steps.data))
    return builder.build(ranks)


def _ranks_and_rows(rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ranks, sorted, and each row's index among them: without a sort where
    the rows come rank after rank in rising order (the reader's batches)."""
    rises = np.diff(rank)
    if bool((rises >= 0).all()):
        changed = rises > 0
        rows = np.zeros(len(rank), dtype=np.intp)
        np.cumsum(changed, out=rows[1:])
        return rank[np.r_[0, np.flatnonzero(changed) + 1]], rows
    ranks, rows = np.unique(rank, return_inverse=True)
    return ranks, rows
