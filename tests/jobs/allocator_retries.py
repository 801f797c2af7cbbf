"""DDP on CPU with a fake device allocator on every rank (tests/fakes/fake_allocator.py);
on --retry-rank the allocator retries every --every steps (with --all-from-step, every
rank's in every step from then on), and the step stalls as a real retry does (the cache
is freed and the device synchronized)."""

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the fake
from fakes.fake_allocator import FakeAllocator  # noqa: E402

from mrcdiag.demo_job import burn_cpu  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--work-ms", type=float, default=10.0)
    p.add_argument("--retry-rank", type=int, default=-1)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--stall-ms", type=float, default=80.0)
    p.add_argument(
        "--all-from-step", type=int, default=-1, help="from this step on, every rank retries"
    )
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    allocator = FakeAllocator()
    allocator.install(torch)
    model = DDP(torch.nn.Linear(64, 64))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    for step in range(args.steps):
        burn_cpu(args.work_ms)
        everyone = 0 <= args.all_from_step <= step
        if everyone or (rank == args.retry_rank and step % args.every == args.every // 2):
            allocator.retry()
            burn_cpu(args.stall_ms)  # freeing the cache, synchronizing the device
        model(torch.randn(8, 64)).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
