"""Issues one call of every wrapped op with known sizes; tests compare the records to EXPECTED."""

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fc


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    f32 = torch.float32
    t = torch.ones(1000, dtype=f32)  # 4000 bytes
    dist.all_reduce(t)
    out = [torch.zeros(250, dtype=f32) for _ in range(world)]
    dist.all_gather(out, torch.ones(250, dtype=f32))
    dist.all_gather_into_tensor(torch.zeros(world * 100, dtype=f32), torch.ones(100, dtype=f32))
    dist.reduce_scatter(torch.zeros(50, dtype=f32), [torch.ones(50, dtype=f32)] * world)
    dist.reduce_scatter_tensor(torch.zeros(64, dtype=f32), torch.ones(64 * world, dtype=f32))
    dist.broadcast(torch.ones(10, dtype=torch.float64), src=0)
    dist.reduce(torch.ones(20, dtype=f32), dst=0)
    dist.all_to_all_single(torch.zeros(8 * world, dtype=f32), torch.ones(8 * world, dtype=f32))
    dist.gather(torch.ones(5, dtype=f32), [torch.zeros(5)] * world if rank == 0 else None, dst=0)
    dist.scatter(torch.zeros(7, dtype=f32), [torch.ones(7)] * world if rank == 0 else None, src=0)
    dist.all_gather_single(torch.zeros(world * 3, dtype=f32), torch.ones(3, dtype=f32))
    dist.reduce_scatter_single(torch.zeros(9, dtype=f32), torch.ones(9 * world, dtype=f32))
    dist.all_reduce_coalesced([torch.ones(4), torch.ones(6)])
    dist.barrier()
    work = dist.all_reduce(torch.ones(30, dtype=torch.int64), async_op=True)
    work.wait()
    sub = dist.new_group([0, 1])
    if rank in (0, 1):
        dist.all_reduce(torch.ones(16, dtype=f32), group=sub)
        dist.all_reduce(torch.ones(16, dtype=f32), group=sub)
    # point to point: a ring of 12-float messages
    nxt, prv = (rank + 1) % world, (rank - 1) % world
    buf = torch.zeros(12, dtype=f32)
    if rank % 2 == 0:
        dist.send(torch.ones(12, dtype=f32), dst=nxt)
        dist.recv(buf, src=prv)
    else:
        dist.recv(buf, src=prv)
        dist.send(torch.ones(12, dtype=f32), dst=nxt)
    reqs = [dist.isend(torch.ones(6, dtype=f32), dst=nxt), dist.irecv(torch.zeros(6), src=prv)]
    for r in reqs:
        r.wait()
    ops = [dist.P2POp(dist.isend, torch.ones(5), nxt), dist.P2POp(dist.irecv, torch.zeros(5), prv)]
    for r in dist.batch_isend_irecv(ops):
        r.wait()
    y = fc.all_reduce(torch.ones(40, dtype=f32), "sum", dist.group.WORLD)
    y = y + 0  # waits
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
