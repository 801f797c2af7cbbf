"""2-D parallelism on a (dp, tp) device mesh: tensor parallel inside each dp replica,
FSDP2 across replicas. Needs 4 ranks. STACK_SLOW_RANK=N makes rank N do extra work per
step."""

from __future__ import annotations

import os
import sys

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    parallelize_module,
)

sys.path.insert(0, os.path.dirname(__file__))
from _common import MLP, report_truth, slow_rank_work  # noqa: E402

STEPS = int(os.environ.get("STACK_STEPS", "6"))


def main() -> None:
    world = int(os.environ["WORLD_SIZE"])
    mesh = init_device_mesh("cpu", (world // 2, 2), mesh_dim_names=("dp", "tp"))
    torch.manual_seed(0)
    model = parallelize_module(
        MLP(32, 64), mesh["tp"], {"up": ColwiseParallel(), "down": RowwiseParallel()}
    )
    fully_shard(model, mesh=mesh["dp"])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(STEPS):
        loss = model(torch.randn(8, 32)).pow(2).mean()
        loss.backward()
        slow_rank_work(torch.distributed.get_rank())
        opt.step()
        opt.zero_grad()
    report_truth(optimizer_steps=STEPS)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
