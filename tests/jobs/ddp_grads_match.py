"""DDP under mrcdiag must average gradients exactly as DDP does: checked against a manual
all-reduce of the same model's local gradients. Exits non-zero on a mismatch.

    ddp_grads_match.py [--cuda]   (--cuda: on GPU LOCAL_RANK % device_count, NCCL where
    every rank has its own GPU, else gloo on the CUDA tensors)"""

import copy
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def main() -> None:
    device = torch.device("cpu")
    backend = "gloo"
    if "--cuda" in sys.argv:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        torch.cuda.set_device(device)
        if int(os.environ["WORLD_SIZE"]) <= torch.cuda.device_count():
            backend = "nccl"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    net = net.to(device)
    reference = copy.deepcopy(net)
    model = DDP(net, bucket_cap_mb=0.01)  # several buckets
    for step in range(3):
        torch.manual_seed(100 + 10 * rank + step)
        x = torch.randn(16, 64).to(device)
        model(x).pow(2).sum().backward()
        reference(x).pow(2).sum().backward()
        for p, q in zip(model.module.parameters(), reference.parameters(), strict=True):
            expected = q.grad.clone()
            dist.all_reduce(expected)
            expected /= world
            if not torch.allclose(p.grad, expected, atol=1e-5):
                print(f"rank {rank} step {step}: DDP gradient differs", file=sys.stderr)
                sys.exit(3)
            p.grad = None
            q.grad = None
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
