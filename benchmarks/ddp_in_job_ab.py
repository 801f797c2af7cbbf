"""mrcdiag's step-time overhead on DDP, measured inside one instrumented job.

    mrcdiag launch --metrics-port 0 -- \\
        python -m torch.distributed.run --nproc-per-node 2 benchmarks/ddp_in_job_ab.py \\
        [--pairs 300] [--batch 128] [--bare-first] [--out FILE]

Separate bare and instrumented runs on a small shared machine differ from run to run by
more than the 2% being measured. Here one job, under `mrcdiag launch`, holds the same
model twice: one DDP built while mrcdiag records (its all-reduces go through our comm
hook and are recorded) and one built with DDP's own constructor (no hook, nothing
recorded). Steps alternate between them one by one, and each pair of adjacent steps
gives one difference. Two models of the same shape in one process are not timed alike
even when both are bare (about 1-2% apart here, by which was built first), so the
driver, benchmarks/ddp_overhead.py, runs this job in both building orders and pools
the differences. The node agent and the writer thread run through both models, so their
share (a few ms of CPU a second, see agent_overhead.py) is not in these differences:
what is, is everything mrcdiag adds to a step's own path.

Rank 0 writes one JSON object: the bare model's step times and the paired differences.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch
import torch.distributed as dist
from alternating_blocks import bare_ddp, model_like_the_benchmarks, paired_steps
from torch.nn.parallel import DistributedDataParallel as DDP


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=300)
    p.add_argument("--batch", type=int, default=128, help="samples per step per rank")
    p.add_argument("--bare-first", action="store_true", help="build the bare model first")
    p.add_argument("--out", help="write the JSON here (rank 0) instead of stdout")
    args = p.parse_args()
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    net = model_like_the_benchmarks()
    if args.bare_first:
        bare = bare_ddp(copy.deepcopy(net))
        recorded = DDP(copy.deepcopy(net))
    else:
        recorded = DDP(copy.deepcopy(net))
        bare = bare_ddp(copy.deepcopy(net))
    if not hasattr(recorded, "__mrcdiag_dispatch__"):
        raise SystemExit("run this under `mrcdiag launch`: DDP is not being recorded")
    pairs = paired_steps(bare, recorded, args.pairs, batch=args.batch)
    if dist.get_rank() == 0:
        result = {
            "batch": args.batch,
            "bare_first": args.bare_first,
            "bare_wall_s": [p[0] for p in pairs],
            "bare_cpu_s": [p[2] for p in pairs],
            "wall_diff_s": [p[1] - p[0] for p in pairs],
            "cpu_diff_s": [p[3] - p[2] for p in pairs],
        }
        text = json.dumps(result)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
        else:
            sys.stdout.write(text + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
