"""What any DDP comm hook costs on CPU, without mrcdiag: the price of our capture route.

    python -m torch.distributed.run --nproc-per-node 2 benchmarks/ddp_comm_hook_cost.py

mrcdiag records DDP's gradient all-reduces through a comm hook. This job builds the same
model four times inside one job (so that machine noise hits all alike, in interleaved
blocks of steps): DDP as is (no hook, its C++ all-reduce with the division fused into
the bucket copy), DDP with torch's own C++ builtin all-reduce hook, with a Python hook
that only sums, and with a Python hook that averages inside gloo (ReduceOp.AVG, what
mrcdiag uses on CPU). Rank 0 prints the median wall and CPU time per step of each.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from alternating_blocks import model_like_the_benchmarks, time_in_blocks
from torch.nn.parallel import DistributedDataParallel as DDP


# No annotations on the hooks: DDP rejects a `bucket` annotated with a postponed string.
def _sum_hook(_state, bucket):
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def _avg_hook(_state, bucket):
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.AVG, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def main() -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    net = model_like_the_benchmarks()
    models = {name: DDP(copy.deepcopy(net)) for name in ("no hook", "builtin", "sum", "avg")}
    models["builtin"]._register_builtin_comm_hook(dist.BuiltinCommHookType.ALLREDUCE)
    models["sum"].register_comm_hook(None, _sum_hook)
    models["avg"].register_comm_hook(None, _avg_hook)
    times = time_in_blocks(models)
    if dist.get_rank() == 0:
        base_wall, base_cpu = times["no hook"]
        for name, (w, c) in times.items():
            print(
                f"{name:8s} wall {w:6.2f} ms ({w / base_wall:.3f})  "
                f"CPU {c:6.2f} ms ({c / base_cpu:.3f})"
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
