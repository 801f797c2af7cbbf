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

import torch
import torch.distributed as dist
from alternating_blocks import model_like_the_benchmarks, time_in_blocks
from torch.nn.parallel import DistributedDataParallel as DDP


def main() -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    net = model_like_the_benchmarks()
    recorded = DDP(copy.deepcopy(net))
    if not hasattr(recorded, "__mrcdiag_dispatch__"):
        raise SystemExit("run this under `mrcdiag launch`: DDP is not being recorded")
    bare = DDP.__new__(DDP)
    DDP.__init__.__wrapped__(bare, copy.deepcopy(net))  # DDP's own constructor
    times = time_in_blocks({"bare": bare, "mrcdiag": recorded}, blocks=25)
    if dist.get_rank() == 0:
        (bw, bc), (mw, mc) = times["bare"], times["mrcdiag"]
        print(
            f"wall per step: bare {bw:.2f} ms, mrcdiag {mw:.2f} ms, ratio {mw / bw:.3f}; "
            f"CPU per step: bare {bc:.2f} ms, mrcdiag {mc:.2f} ms, ratio {mc / bc:.3f}"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
