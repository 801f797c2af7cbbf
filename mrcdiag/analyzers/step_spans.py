"""When each step began and ended across the ranks, and each rank's last step: what the
analyzers need of the step rows besides the [rank, step] matrices (both made by the step
grid, store/step_grid.py), so that the rows need not be held."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrcdiag.store.step_grid import NONE


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
