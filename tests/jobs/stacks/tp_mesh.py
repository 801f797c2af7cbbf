"""Tensor parallel set up only by init_device_mesh (no init_process_group of its own):
an MLP split column-wise then row-wise, so each forward all-reduces its output and each
backward its input gradient. STACK_SLOW_RANK=N makes rank N do extra work per step."""

from __future__ import annotations

import os
import sys

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    parallelize_module,
)

sys.path.insert(0, os.path.dirname(__file__))
from _common import MLP, report_truth, slow_rank_work  # noqa: E402

STEPS = int(os.environ.get("STACK_STEPS", "20"))


def main() -> None:
    mesh = init_device_mesh("cpu", (int(os.environ["WORLD_SIZE"]),), mesh_dim_names=("tp",))
    torch.manual_seed(0)
    model = parallelize_module(
        MLP(64, 256), mesh, {"up": ColwiseParallel(), "down": RowwiseParallel()}
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rank = mesh.get_rank()
    for _ in range(STEPS):
        x = torch.randn(32, 64)
        loss = model(x).pow(2).mean()
        loss.backward()
        slow_rank_work(rank)
        opt.step()
        opt.zero_grad()
    report_truth(optimizer_steps=STEPS)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
