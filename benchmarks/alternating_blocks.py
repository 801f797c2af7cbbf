"""Shared by the A/B benchmarks: time several DDP models in alternating blocks, build a
bare DDP under mrcdiag, alternate a bare and a recorded call one by one.

Machine noise on a small shared host is larger than the differences being measured, so
every model runs a block of steps in turn, many times over, and each gets the median of
its steps' wall and CPU time (the process's, all threads), in ms.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP


def model_like_the_benchmarks() -> torch.nn.Module:
    """Six 1024x1024 layers: 24 MB of gradients per step, like benchmarks/ddp_job.py."""
    return torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(6)])


def time_in_blocks(
    models: dict[str, torch.nn.Module], blocks: int = 20, steps: int = 8, batch: int = 128
) -> dict[str, tuple[float, float]]:
    """name -> (median wall ms, median CPU ms) per step, warm-up steps of a block left out.

    `batch` sets the compute per byte of gradient: 128 samples of 1024 features is 768
    FLOP per parameter per step, far less than a real training step (a transformer does
    6 FLOP per parameter per token, with thousands of tokens per rank), so any cost that
    scales with the gradients' size shows here at its largest."""
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=1e-3) for name, m in models.items()}
    x = torch.randn(batch, 1024)
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for _block in range(blocks):
        for name, model in models.items():
            for step in range(steps):
                t0, c0 = time.perf_counter(), time.process_time()
                model(x).pow(2).mean().backward()
                optimizers[name].step()
                optimizers[name].zero_grad()
                if step >= 2:  # the first steps of a block warm its caches
                    wall[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
    return {
        name: (statistics.median(wall[name]) * 1e3, statistics.median(cpu[name]) * 1e3)
        for name in models
    }


def paired_steps(
    first: torch.nn.Module, second: torch.nn.Module, pairs: int, batch: int = 128
) -> list[tuple[float, float, float, float]]:
    """Per pair of adjacent steps, one of each model: (wall a, wall b, CPU a, CPU b), s.

    The order within a pair flips every pair (ABBA...), so that whatever the step before
    leaves behind (caches, the gloo thread's last work) falls on both alike. The first
    pairs warm up and are left out."""
    models = (first, second)
    optimizers = [torch.optim.SGD(m.parameters(), lr=1e-3) for m in models]
    x = torch.randn(batch, 1024)
    out: list[tuple[float, float, float, float]] = []
    for pair in range(pairs + 5):
        wall, cpu = [0.0, 0.0], [0.0, 0.0]
        for which in (0, 1) if pair % 2 == 0 else (1, 0):
            t0, c0 = time.perf_counter(), time.process_time()
            models[which](x).pow(2).mean().backward()
            optimizers[which].step()
            optimizers[which].zero_grad()
            wall[which], cpu[which] = time.perf_counter() - t0, time.process_time() - c0
        if pair >= 5:
            out.append((wall[0], wall[1], cpu[0], cpu[1]))
    return out


def bare_ddp(net: torch.nn.Module, **kwargs: Any) -> DDP:
    """A DDP built by DDP's own constructor while mrcdiag records: no comm hook of ours,
    nothing recorded (the constructor mrcdiag wraps keeps the original as __wrapped__)."""
    bare = DDP.__new__(DDP)
    DDP.__init__.__wrapped__(bare, net, **kwargs)
    return bare


def alternate_calls(
    bare: Callable[[Any], Any],
    wrapped: Callable[[Any], Any],
    arg: Any,
    calls: int,
    rounds: int,
    after_round: Callable[[], Any] = lambda: None,
) -> tuple[float, float]:
    """Median host time of one call, bare and wrapped, in us, alternated call by call so
    that drift (a worker thread's wake-ups, the other cores' load) hits both alike."""
    bare_ns, wrapped_ns = [], []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for _ in range(calls // 2):
            t0 = clock()
            bare(arg)
            t1 = clock()
            wrapped(arg)
            t2 = clock()
            bare_ns.append(t1 - t0)
            wrapped_ns.append(t2 - t1)
        after_round()
    return statistics.median(bare_ns) / 1e3, statistics.median(wrapped_ns) / 1e3
