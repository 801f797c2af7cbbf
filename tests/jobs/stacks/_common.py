"""What the training-stack jobs share: report what the job itself knows (its optimizer
steps) to the file the test names, so the test can hold mrcdiag's records against it;
and the MLP the tensor-parallel jobs split."""

from __future__ import annotations

import json
import os

import torch
import torch.nn as nn


def report_truth(**facts: object) -> None:
    """Rank 0 writes `facts` to $STACK_TRUTH (a JSON file), when the test gave one."""
    path = os.environ.get("STACK_TRUTH")
    if path and int(os.environ.get("RANK", "0")) == 0:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(facts, f)


class MLP(nn.Module):
    """Up and down projections: the unit tensor parallelism splits (column, then row)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))
