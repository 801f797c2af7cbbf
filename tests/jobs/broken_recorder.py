"""A job during which mrcdiag's own recording breaks; the job must not notice."""

import torch
import torch.distributed as dist


def boom(*args, **kwargs):
    raise RuntimeError("injected failure inside mrcdiag")


def main() -> None:
    dist.init_process_group("gloo")
    from mrcdiag.capture.recorder import Recorder

    Recorder.add_collective = boom  # every record from now on fails inside the hook
    total = torch.zeros(1)
    for _ in range(10):
        t = torch.ones(1)
        dist.all_reduce(t)
        total += t
    assert total.item() == 10 * dist.get_world_size()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
