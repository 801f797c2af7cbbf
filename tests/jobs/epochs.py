"""The classic epoch loop: `for epoch ...: for batch in loader`, a DataLoader with worker
processes that are not kept between epochs (persistent_workers=False, the default), each
of which takes a while to start (opening its shards, a connection). Every rank waits for
its workers at the start of each epoch."""

import argparse
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps-per-epoch", type=int, default=10)
    p.add_argument("--worker-start-s", type=float, default=0.25)
    p.add_argument("--work-ms", type=float, default=10.0)
    args = p.parse_args()
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    world = dist.get_world_size()
    batch = 8
    data = TensorDataset(torch.randn(args.steps_per_epoch * batch * world, 64))
    sampler = DistributedSampler(data)
    loader = DataLoader(
        data, batch_size=batch, sampler=sampler, num_workers=2,
        worker_init_fn=lambda _: time.sleep(args.worker_start_s),
    )  # fmt: skip
    model = DDP(torch.nn.Linear(64, 64))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for (x,) in loader:
            end = time.perf_counter() + args.work_ms / 1e3
            a = torch.randn(64, 64)
            while time.perf_counter() < end:  # the step's own compute
                a = torch.tanh(a @ a)
            model(x).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
