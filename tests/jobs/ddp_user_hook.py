"""DDP with several gradient buckets and the user's own comm hook; rank 0 writes what it saw."""

import argparse
import json

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

calls = 0
bucket_bytes: list[int] = []


def counting_hook(state, bucket):
    global calls
    calls += 1
    if len(bucket_bytes) < 100:
        buf = bucket.buffer()
        bucket_bytes.append(buf.numel() * buf.element_size())
    return default_hooks.allreduce_hook(state, bucket)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("marker")
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(4)])
    model = DDP(net, bucket_cap_mb=0.3)
    model.register_comm_hook(dist.group.WORLD, counting_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    first_step_buckets = 0
    for step in range(args.steps):
        model(torch.randn(4, 256)).sum().backward()
        if step == 0:
            first_step_buckets = calls
        opt.step()
        opt.zero_grad()
    if dist.get_rank() == 0:
        with open(args.marker + ".rank0.json", "w") as f:
            json.dump(
                {
                    "calls": calls,
                    "first_step_buckets": first_step_buckets,
                    "bucket_bytes": bucket_bytes,
                    "param_bytes": sum(p.numel() * p.element_size() for p in net.parameters()),
                },
                f,
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
