"""A DDP job on real GPUs, for the tests that run where CUDA is (tests/test_gpu.py).

Each rank trains on GPU LOCAL_RANK % device_count: NCCL when every rank has its own GPU,
gloo on the CUDA tensors when ranks share one (NCCL refuses two ranks on one GPU). The
slow rank queues extra matrix products on its GPU each step: its host runs ahead and
calls the collectives on time, only its device is late, as with a GPU that is slower
or busier than its peers. Before the loop, one all_reduce is queued behind ~QUEUED_MS
of GPU work, and the host time of that call is written to HOST_MARKS for the test.

    torchrun --nproc-per-node 2 gpu_ddp.py --steps 40 --gpu-ms 5 --slow-rank 1 --slow-ms 25
"""

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

QUEUED_MS = 50.0
SIDE = 2048


def matmuls_for(ms: float, device: torch.device) -> int:
    """How many SIDE x SIDE products take about `ms` on this GPU."""
    a = torch.randn(SIDE, SIDE, device=device)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ a
    end.record()
    end.synchronize()
    return max(1, round(ms / (start.elapsed_time(end) / 20)))


def gpu_work(count: int, a: torch.Tensor) -> None:
    for _ in range(count):
        a = torch.tanh(a @ a)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--gpu-ms", type=float, default=5.0, help="GPU work per step, every rank")
    p.add_argument("--slow-rank", type=int, default=-1)
    p.add_argument("--slow-ms", type=float, default=0.0, help="extra GPU work on --slow-rank")
    args = p.parse_args()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    backend = "nccl" if world <= torch.cuda.device_count() else "gloo"
    dist.init_process_group(backend)
    rank = dist.get_rank()
    per_ms = matmuls_for(1.0, device)
    a = torch.randn(SIDE, SIDE, device=device) / SIDE**0.5

    # One collective queued behind GPU work: its host call returns long before the
    # device reaches it (NCCL), so only device timing puts its arrival QUEUED_MS later.
    probe = torch.ones(1 << 20, device=device)
    dist.barrier()
    torch.cuda.synchronize(device)
    gpu_work(round(QUEUED_MS * per_ms), a)
    host_call_ns = time.monotonic_ns()
    dist.all_reduce(probe)
    torch.cuda.synchronize(device)
    marks = os.environ.get("HOST_MARKS")
    if marks and rank == 0:
        with open(marks, "w") as f:
            json.dump({"backend": backend, "queued_call_ns": host_call_ns}, f)

    torch.manual_seed(0)
    model = DDP(
        torch.nn.Sequential(
            torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024)
        ).to(device),
        device_ids=[device.index],
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(64, 1024, device=device)
    extra = round(args.slow_ms * per_ms) if rank == args.slow_rank else 0
    for _ in range(args.steps):
        gpu_work(round(args.gpu_ms * per_ms) + extra, a)
        model(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
