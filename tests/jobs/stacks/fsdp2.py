"""FSDP2 (`fully_shard`) on gloo: a few steps, then a checkpoint save that gathers every
parameter with DTensor.full_tensor(), as a state-dict save does. STACK_SLOW_RANK=N
makes rank N do extra work per step."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, os.path.dirname(__file__))
from _common import report_truth, slow_rank_work  # noqa: E402

STEPS = int(os.environ.get("STACK_STEPS", "8"))


def main() -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)
    )
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(STEPS):
        loss = model(torch.randn(16, 32)).pow(2).mean()
        loss.backward()
        slow_rank_work(dist.get_rank())
        opt.step()
        opt.zero_grad()
    full = {name: p.full_tensor() for name, p in model.state_dict().items()}
    assert all(t.is_contiguous() for t in full.values())
    report_truth(optimizer_steps=STEPS)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
