"""The job benchmarks/peers.py observes: DDP on 2 gloo ranks, ~45 ms steps on this
machine, every step's wall time written by rank 0 (BENCH_OUT, JSON).

    torchrun --nproc-per-node 2 benchmarks/peers_job.py --steps 200 [--profile window|full]

`--profile window` records 10 steps with torch.profiler after 50 (wait 40, warm-up 10),
as people record a window for Holistic Trace Analysis; `--profile full` records every
step. Each writes its Chrome trace from inside the loop (the schedule's on_trace_ready),
as it would in a real job, so the export is in the whole-loop time.

For the analysis side (benchmarks/peers_analysis.py): `--slow-rank R --slow-ms MS` gives
rank R that much more compute each step, and `--fr-dump-dir DIR` writes each rank's
flight recorder at the end as its timeout dump would (pickle, trace_rank_<rank>; needs
TORCH_FR_BUFFER_SIZE).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def profiler(kind: str, steps: int, trace_dir: str) -> contextlib.AbstractContextManager:
    if kind == "none":
        return contextlib.nullcontext()
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    wait, warmup, active = (40, 10, 10) if kind == "window" else (0, 0, steps)
    return profile(
        activities=[ProfilerActivity.CPU],
        schedule=schedule(wait=wait, warmup=warmup, active=active, repeat=1),
        on_trace_ready=tensorboard_trace_handler(trace_dir),
        record_shapes=False,
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--profile", choices=("none", "window", "full"), default="none")
    p.add_argument("--trace-dir", default=os.environ.get("BENCH_TRACES", "traces"))
    p.add_argument("--slow-rank", type=int, default=-1)
    p.add_argument("--slow-ms", type=float, default=0.0)
    p.add_argument("--fr-dump-dir", default="")
    p.add_argument(
        "--comm-hook", choices=("none", "builtin", "python"), default="none",
        help="register torch's own all-reduce comm hook (the C++ builtin or the Python "
        "one) on the bare job: what any comm hook costs, mrcdiag's apart",
    )  # fmt: skip
    args = p.parse_args()
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    layers = [torch.nn.Linear(args.width, args.width) for _ in range(args.layers)]
    model = DDP(torch.nn.Sequential(*layers))
    if args.comm_hook == "builtin":
        model._register_builtin_comm_hook(dist.BuiltinCommHookType.ALLREDUCE)
    elif args.comm_hook == "python":
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        model.register_comm_hook(None, allreduce_hook)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, args.width)
    slow = dist.get_rank() == args.slow_rank and args.slow_ms > 0
    if slow:  # the demo job's extra compute: matrix products up to a wall-clock deadline
        from mrcdiag.demo_job import burn_cpu
    times = []
    with profiler(args.profile, args.steps, args.trace_dir) as prof:
        for _ in range(args.steps):
            t0 = time.perf_counter()
            if slow:
                burn_cpu(args.slow_ms)
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            if prof is not None:
                prof.step()
            times.append(time.perf_counter() - t0)
    if args.fr_dump_dir:
        os.makedirs(args.fr_dump_dir, exist_ok=True)
        dump = torch._C._distributed_c10d._dump_fr_trace()
        with open(os.path.join(args.fr_dump_dir, f"trace_rank_{dist.get_rank()}"), "wb") as f:
            f.write(dump)
    if dist.get_rank() == 0 and os.environ.get("BENCH_OUT"):
        with open(os.environ["BENCH_OUT"], "w") as f:
            json.dump({"step_s": times}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
