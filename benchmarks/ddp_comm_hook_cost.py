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
import statistics
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


# No annotations on the hooks: DDP rejects a `bucket` annotated with a postponed string.
def _sum_hook(_state, bucket):  # noqa: ANN001, ANN202
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def _avg_hook(_state, bucket):  # noqa: ANN001, ANN202
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.AVG, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def main() -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(6)])
    models = {name: DDP(copy.deepcopy(net)) for name in ("no hook", "builtin", "sum", "avg")}
    models["builtin"]._register_builtin_comm_hook(dist.BuiltinCommHookType.ALLREDUCE)
    models["sum"].register_comm_hook(None, _sum_hook)
    models["avg"].register_comm_hook(None, _avg_hook)
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=1e-3) for name, m in models.items()}
    x = torch.randn(128, 1024)
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for _block in range(20):
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
        base_wall, base_cpu = statistics.median(wall["no hook"]), statistics.median(cpu["no hook"])
        for name in models:
            w, c = statistics.median(wall[name]), statistics.median(cpu[name])
            print(
                f"{name:8s} wall {w * 1e3:6.2f} ms ({w / base_wall:.3f})  "
                f"CPU {c * 1e3:6.2f} ms ({c / base_cpu:.3f})"
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
