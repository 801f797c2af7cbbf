"""A DDP step that is mostly compute, timed by itself. Rank 0 writes its median step time
and the median CPU time its process (all its threads: training, autograd, gloo, and
mrcdiag's writer when instrumented) spent per step, as JSON."""

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=150)
    args = p.parse_args()
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = DDP(torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(6)]))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(128, 1024)
    times, cpu = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    if dist.get_rank() == 0:
        with open(os.environ["BENCH_OUT"], "w") as f:
            json.dump(
                {
                    "wall_ms": statistics.median(times[10:]) * 1e3,
                    "cpu_ms": statistics.median(cpu[10:]) * 1e3,
                },
                f,
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
