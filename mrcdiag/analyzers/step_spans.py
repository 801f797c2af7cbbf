"""When each step began and ended across the ranks, and each rank's last step: what the
analyzers need of the step rows besides the [rank, step] matrices, so that the rows
(56 bytes a rank-step, 1.8 GB at 16384 ranks x 2000 steps) can be let go once both are
made."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrcdiag.store.reader import Columns

NONE = -1  # no rank recorded that step, or the rank recorded no step


@dataclass(frozen=True)
class StepSpans:
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


def step_spans(steps: Columns, ranks: np.ndarray, rows: np.ndarray, n_steps: int) -> StepSpans:
    """`rows`: each step record's row in `ranks`."""
    first = np.full(n_steps, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(n_steps, np.iinfo(np.int64).min, dtype=np.int64)
    step = steps["step"]
    # of the step column's own type: ufunc.at with another one casts row by row (30x)
    last_step = np.full(len(ranks), NONE, dtype=step.dtype)
    if len(steps):
        np.minimum.at(first, step, steps["t_start_ns"])
        np.maximum.at(last, step, steps["t_end_ns"])
        np.maximum.at(last_step, rows, step)
    none = first == np.iinfo(np.int64).max
    first[none] = NONE
    last[none] = NONE
    return StepSpans(first, last, ranks, last_step)
