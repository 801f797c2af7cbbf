"""Collectives inside torch.compile(fullgraph=True): the c10d API (which Dynamo turns into
functional collectives) and the functional ones with their wait. Under mrcdiag the graph
must still compile whole and give the same numbers."""

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fc


def functional(x: torch.Tensor) -> torch.Tensor:
    y = fc.all_reduce(x * 2, "sum", dist.group.WORLD)
    return fc.wait_tensor(y) + 1


def c10d_api(x: torch.Tensor) -> torch.Tensor:
    x = x * 2
    dist.all_reduce(x)
    return x + 1


def main() -> None:
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    for fn in (functional, c10d_api):
        out = torch.compile(fn, fullgraph=True, backend="aot_eager")(torch.ones(4))
        assert torch.equal(out, torch.full((4,), 2.0 * world + 1)), out
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
