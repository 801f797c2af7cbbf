"""A small DDP training job with faults that can be injected on purpose.

Used by `mrcdiag demo` and by the tests. Every slowdown is real work done by the job
(CPU burned in matrix products, a slow dataset), never a sleep inside mrcdiag.

    torchrun --nproc-per-node 2 -m mrcdiag.demo_job --steps 60 --slow-rank 1 --slow-ms 30
"""

from __future__ import annotations

import argparse
import os
import threading
import time


def burn_cpu(milliseconds: float) -> None:
    """Keep this core busy with real arithmetic for about `milliseconds` of wall time.

    A deadline on the wall clock, not on CPU time: on a shared core the work then takes
    as long as asked wherever the scheduler puts the other process, so a test's verdict
    does not hang on where it lands (with CPU time, a busy loop that moved onto one
    rank's core partway made a clean run "slow down"). `fixed_work` is the other kind.
    """
    import torch

    deadline = time.perf_counter() + milliseconds / 1000.0
    a = torch.randn(64, 64)
    while time.perf_counter() < deadline:
        a = torch.tanh(a @ a)


def fixed_work(iterations: int) -> None:
    """A fixed amount of arithmetic: takes longer when the core is shared."""
    import torch

    a = torch.randn(96, 96)
    for _ in range(iterations):
        a = torch.tanh(a @ a)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--work-ms", type=float, default=10.0, help="compute per step, every rank")
    p.add_argument("--slow-rank", type=int, action="append", default=[])
    p.add_argument("--slow-ms", type=float, default=0.0, help="extra compute on --slow-rank")
    p.add_argument(
        "--slow-from-step", type=int, default=0, help="--slow-rank is slow from this step on"
    )
    p.add_argument(
        "--stall-every",
        type=int,
        default=0,
        help="--slow-rank does its extra work only every N steps (a checkpoint, a flush)",
    )
    p.add_argument(
        "--stall-after-backward",
        action="store_true",
        help="with --stall-every: the extra work comes after the backward pass (an "
        "evaluation or a checkpoint on that rank), not before the forward",
    )
    p.add_argument(
        "--slow-host-rank",
        type=int,
        default=-1,
        help="ranks on the same host as this rank get --slow-ms too",
    )
    p.add_argument("--slow-data-rank", type=int, default=-1)
    p.add_argument("--slow-data-ms", type=float, default=0.0)
    p.add_argument(
        "--slowdown-at-step",
        type=int,
        default=-1,
        help="from this step on every rank does --slowdown-ms more work",
    )
    p.add_argument("--slowdown-ms", type=float, default=0.0)
    p.add_argument("--die-rank", type=int, default=-1, help="this rank SIGKILLs itself")
    p.add_argument("--die-at-step", type=int, default=-1)
    p.add_argument(
        "--die-signal",
        type=int,
        default=9,
        help="the signal --die-rank dies of: 9 (SIGKILL, as the OOM killer) or 6 (abort(), "
        "as a C++ exception ending in terminate)",
    )
    p.add_argument("--raise-rank", type=int, default=-1, help="this rank raises an error")
    p.add_argument("--raise-at-step", type=int, default=-1)
    p.add_argument("--hang-rank", type=int, default=-1, help="this rank blocks forever")
    p.add_argument("--hang-at-step", type=int, default=-1)
    p.add_argument(
        "--log-loss",
        action="store_true",
        help="gather every rank's loss every step for logging (a scalar collective)",
    )
    p.add_argument(
        "--skip-log-rank",
        type=int,
        default=-1,
        help="this rank skips the logging all-gather at --skip-at-step (implies --log-loss)",
    )
    p.add_argument("--skip-at-step", type=int, default=-1)
    p.add_argument(
        "--pg-timeout-s", type=float, default=0.0, help="the process group's timeout, if set"
    )
    p.add_argument(
        "--fr-dump-dir",
        default="",
        help="on a failed collective, write PyTorch's flight recorder here as its timeout "
        "dump does (pickle, trace_rank_<rank>); needs TORCH_FR_BUFFER_SIZE",
    )
    p.add_argument(
        "--fixed-work",
        type=int,
        default=0,
        help="matrix products per step, every rank (slower on a shared core)",
    )
    p.add_argument("--pin", action="store_true", help="pin each rank to core LOCAL_RANK")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    return p.parse_args(argv)


class _SlowDataset:
    """A map-style dataset whose items cost `delay_ms` each on the slow rank."""

    def __init__(self, n: int, width: int, delay_ms: float) -> None:
        self.n, self.width, self.delay_ms = n, width, delay_ms

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        import torch

        if self.delay_ms:
            burn_cpu(self.delay_ms)
        return torch.randn(self.width)


def main(argv: list[str] | None = None) -> None:
    import torch
    import torch.distributed as dist

    args = parse_args(argv)
    if args.pg_timeout_s > 0:
        import datetime

        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.pg_timeout_s))
    else:
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        _train(args, rank)
    except RuntimeError:
        if args.fr_dump_dir:  # as NCCL's watchdog dumps on a timeout
            os.makedirs(args.fr_dump_dir, exist_ok=True)
            dump = torch._C._distributed_c10d._dump_fr_trace()
            with open(os.path.join(args.fr_dump_dir, f"trace_rank_{rank}"), "wb") as f:
                f.write(dump)
        raise
    dist.barrier()
    dist.destroy_process_group()


def _train(args: argparse.Namespace, rank: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader

    if args.pin:
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        os.sched_setaffinity(0, {local_rank % os.cpu_count()})
        torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DDP(
        torch.nn.Sequential(
            torch.nn.Linear(args.hidden, args.hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(args.hidden, args.hidden),
        )
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    data_delay = args.slow_data_ms if rank == args.slow_data_rank else 0.0
    loader = DataLoader(
        _SlowDataset(args.steps * args.batch, args.hidden, data_delay / args.batch),
        batch_size=args.batch,
    )
    slow = rank in args.slow_rank
    if args.slow_host_rank >= 0:
        import socket

        hosts: list = [None] * dist.get_world_size()
        dist.all_gather_object(hosts, socket.gethostname())
        slow = slow or hosts[rank] == hosts[args.slow_host_rank]
    for step, batch in enumerate(loader):
        if step == args.die_at_step and rank == args.die_rank:
            if args.die_signal == 6:
                os.abort()
            os.kill(os.getpid(), args.die_signal)
        if step == args.raise_at_step and rank == args.raise_rank:
            raise RuntimeError(f"injected failure on rank {rank} at step {step}")
        if step == args.hang_at_step and rank == args.hang_rank:
            threading.Event().wait()  # stuck in its own code: a deadlock, a dead mount
        burn_cpu(args.work_ms)
        fixed_work(args.fixed_work)
        stall_now = slow and step >= args.slow_from_step
        if stall_now and args.stall_every > 0:
            stall_now = step % args.stall_every == args.stall_every // 2
        if stall_now and not args.stall_after_backward:
            burn_cpu(args.slow_ms)
        if 0 <= args.slowdown_at_step <= step:
            burn_cpu(args.slowdown_ms)
        loss = model(batch).pow(2).mean()
        if args.log_loss or args.skip_log_rank >= 0:
            if not (rank == args.skip_log_rank and step == args.skip_at_step):
                losses = [torch.zeros(()) for _ in range(dist.get_world_size())]
                dist.all_gather(losses, loss.detach())
        loss.backward()
        if stall_now and args.stall_after_backward:
            burn_cpu(args.slow_ms)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
