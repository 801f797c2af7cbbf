"""The two-line API, without `mrcdiag launch`: attach() and step() by hand."""

import sys

import torch
import torch.distributed as dist

import mrcdiag


def main() -> None:
    run_dir = sys.argv[1]
    dist.init_process_group("gloo")
    assert mrcdiag.attach(run_dir=run_dir, job="api")
    for _ in range(5):
        with mrcdiag.step():
            dist.all_reduce(torch.ones(100))
            dist.all_reduce(torch.ones(100))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
