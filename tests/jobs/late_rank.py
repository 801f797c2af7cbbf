"""One rank sleeps before each 4096-byte all_reduce; the others go straight in."""

import argparse
import time

import torch
import torch.distributed as dist


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--late-rank", type=int, default=1)
    p.add_argument("--delay", type=float, default=0.3)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    dist.init_process_group("gloo")
    for _ in range(args.rounds):
        dist.all_reduce(torch.ones(2))  # line everyone up
        if dist.get_rank() == args.late_rank:
            time.sleep(args.delay)
        dist.all_reduce(torch.ones(1024))  # 4096 bytes: the late one
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
