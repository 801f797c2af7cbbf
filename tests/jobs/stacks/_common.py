"""What the training-stack jobs share: report what the job itself knows (its optimizer
steps) to the file the test names, so the test can hold mrcdiag's records against it;
and the MLP the tensor-parallel jobs split."""

from __future__ import annotations

import json
import os
import time

import torch
import torch.nn as nn


def report_truth(**facts: object) -> None:
    """Rank 0 writes `facts` to $STACK_TRUTH (a JSON file), when the test gave one."""
    path = os.environ.get("STACK_TRUTH")
    if path and int(os.environ.get("RANK", "0")) == 0:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(facts, f)


def slow_rank_work(rank: int) -> None:
    """Extra work on the rank $STACK_SLOW_RANK names: $STACK_SLOW_S seconds of busy CPU
    (0.03 unless told), as a rank whose own compute is slower than its peers' spends it."""
    if rank == int(os.environ.get("STACK_SLOW_RANK", "-1")):
        end = time.perf_counter() + float(os.environ.get("STACK_SLOW_S", "0.03"))
        while time.perf_counter() < end:
            pass


class MLP(nn.Module):
    """Up and down projections: the unit tensor parallelism splits (column, then row)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))
