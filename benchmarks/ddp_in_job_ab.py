"""mrcdiag's step-time overhead on DDP, measured inside one instrumented job.

    mrcdiag launch --metrics-port 0 -- \\
        python -m torch.distributed.run --nproc-per-node 2 benchmarks/ddp_in_job_ab.py

Separate bare and instrumented runs on a small shared machine differ from run to run by
more than the 2% being measured. Here one job, under `mrcdiag launch`, holds the same
model twice: one DDP built while mrcdiag records (its all-reduces go through our comm
hook and are recorded) and one built with DDP's own constructor (no hook, nothing
recorded). Blocks of steps alternate between them, so that drift hits both alike. The
node agent and the writer thread run through both, so their share (a few ms of CPU a
second, see agent_overhead.py) is not in this ratio: what is, is everything mrcdiag
adds to a step's own path. Rank 0 prints medians of wall and CPU time per step.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def main() -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(6)])
    recorded = DDP(copy.deepcopy(net))
    if not hasattr(recorded, "__mrcdiag_dispatch__"):
        raise SystemExit("run this under `mrcdiag launch`: DDP is not being recorded")
    bare = DDP.__new__(DDP)
    DDP.__init__.__wrapped__(bare, copy.deepcopy(net))  # DDP's own constructor
    models = {"bare": bare, "mrcdiag": recorded}
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=1e-3) for name, m in models.items()}
    x = torch.randn(128, 1024)
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for _block in range(25):
        for name, model in models.items():
            for step in range(8):
                t0, c0 = time.perf_counter(), time.process_time()
                model(x).pow(2).mean().backward()
                optimizers[name].step()
                optimizers[name].zero_grad()
                if step >= 2:  # the first steps of a block warm its caches
                    wall[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
    if dist.get_rank() == 0:
        w = {name: statistics.median(v) * 1e3 for name, v in wall.items()}
        c = {name: statistics.median(v) * 1e3 for name, v in cpu.items()}
        print(
            f"wall per step: bare {w['bare']:.2f} ms, mrcdiag {w['mrcdiag']:.2f} ms, "
            f"ratio {w['mrcdiag'] / w['bare']:.3f}; CPU per step: bare {c['bare']:.2f} ms, "
            f"mrcdiag {c['mrcdiag']:.2f} ms, ratio {c['mrcdiag'] / c['bare']:.3f}"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
