"""A 2-stage pipeline (torch.distributed.pipelining) on gloo: GPipe or 1F1B
(STACK_SCHEDULE), 4 microbatches per step. STACK_SLOW_STAGE=N gives stage N twice the
layers of the other (an uneven split).

The oracle for point-to-point operations, which gloo's flight recorder does not record:
torch.profiler around the whole loop, counting the c10d send/recv ops it saw
(STACK_PROFILE=0 leaves it out: its per-op cost falls unevenly on the stages)."""

from __future__ import annotations

import json
import os
import sys
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
from _common import report_truth  # noqa: E402

STEPS = int(os.environ.get("STACK_STEPS", "6"))
SCHEDULE = os.environ.get("STACK_SCHEDULE", "gpipe")
SLOW_STAGE = int(os.environ.get("STACK_SLOW_STAGE", "-1"))
WIDTH = int(os.environ.get("STACK_WIDTH", "384"))
BATCH = 64  # 16 rows per microbatch: compute, not the schedule's bookkeeping, per stage


def stage_module(stage: int) -> nn.Module:
    depth = 8 if stage == SLOW_STAGE else 2
    return nn.Sequential(*[nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh()) for _ in range(depth)])


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(rank)
    stage = PipelineStage(stage_module(rank), rank, world, torch.device("cpu"))
    schedule_cls = Schedule1F1B if SCHEDULE == "1f1b" else ScheduleGPipe
    loss_fn = lambda out, target: (out - target).pow(2).mean()  # noqa: E731
    schedule = schedule_cls(stage, n_microbatches=4, loss_fn=loss_fn)
    opt = torch.optim.SGD(stage.submod.parameters(), lr=0.01)
    profiled = os.environ.get("STACK_PROFILE", "1") == "1"
    with profile(activities=[ProfilerActivity.CPU]) if profiled else nullcontext() as prof:
        for _ in range(STEPS):
            if rank == 0:
                schedule.step(torch.randn(BATCH, WIDTH))
            elif rank == world - 1:
                schedule.step(target=torch.randn(BATCH, WIDTH))
            else:
                schedule.step()
            opt.step()
            opt.zero_grad()
    counts = {"send": 0, "recv": 0}
    for event in prof.events() if profiled else []:
        if event.name in ("c10d::send", "c10d::recv_"):
            counts["send" if event.name == "c10d::send" else "recv"] += 1
    report_truth(optimizer_steps=STEPS)
    truth_path = os.environ.get("STACK_TRUTH")
    if truth_path:  # every rank reports its own point-to-point counts
        with open(f"{truth_path}.rank{rank}", "w", encoding="utf-8") as f:
            json.dump({"p2p": counts}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
