"""Small hand-made runs, built in memory, for testing analyzers edge by edge."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from mrcdiag.store.reader import Columns, GroupInfo, RankInfo, RunData
from mrcdiag.store.records import RunMeta
from mrcdiag.store.schema import OP_CODE

MS = 1_000_000  # ns


def rank_info(rank: int, host: str = "h0", closed: bool = True, stuck=None) -> RankInfo:
    return RankInfo(rank, host, rank, 0, 0, 0, "shared_clock", closed, 0, 0, 0, stuck, None)


def make_run(
    world: int,
    # (rank, step, start_ns, end_ns, data_wait_ns, comm_ns), and optionally the stepping
    # thread's (cpu_ns, cpu_wait_ns) and its cgroup's throttled ns
    steps: list[tuple],
    collectives: list[tuple],  # (rank, op, group, seq, nbytes, arrive_ns, end_ns, step, async)
    groups: list[tuple[int, ...]] | None = None,
    hosts: dict[int, str] | None = None,
    closed: dict[int, bool] | None = None,
    stuck: dict[int, dict] | None = None,
) -> RunData:
    groups = groups or [tuple(range(world))]
    hosts = hosts or {}
    ranks = {
        r: rank_info(r, hosts.get(r, "h0"), (closed or {}).get(r, True), (stuck or {}).get(r))
        for r in range(world)
    }
    width = len(steps[0]) if steps else 6
    s = np.array(steps, dtype=np.int64).reshape(-1, width)
    c = np.array(
        [
            (r, OP_CODE[op], g, q, b, a, e, st, int(asy))
            for r, op, g, q, b, a, e, st, asy in collectives
        ],
        dtype=np.int64,
    ).reshape(-1, 9)
    return RunData(
        run_dirs=[Path("handmade")],
        run=RunMeta("handmade", (), ""),
        world_size=world,
        ranks=ranks,
        groups=[GroupInfo(str(i), g, "gloo") for i, g in enumerate(groups)],
        collectives=Columns(
            {
                "op": c[:, 1].astype(np.uint8),
                "source": np.zeros(len(c), np.uint8),
                "group": c[:, 2].astype(np.int32),
                "seq": c[:, 3],
                "peer": np.full(len(c), -1),
                "nbytes": c[:, 4],
                "dtype": np.ones(len(c), np.uint8),
                "is_async": c[:, 8].astype(bool),
                "t_arrive_ns": c[:, 5],
                "t_end_ns": c[:, 6],
                "step": c[:, 7].astype(np.int32),
                "rank": c[:, 0].astype(np.int32),
            }
        ),
        steps=Columns(
            {
                "step": s[:, 1].astype(np.int32),
                "t_start_ns": s[:, 2],
                "t_end_ns": s[:, 3],
                "data_wait_ns": s[:, 4],
                "comm_ns": s[:, 5],
                "n_collectives": np.ones(len(s), np.int32),
                "cpu_ns": s[:, 6] if width > 7 else np.full(len(s), -1),
                "cpu_wait_ns": s[:, 7] if width > 7 else np.full(len(s), -1),
                "cpu_throttled_ns": s[:, 8] if width > 8 else np.full(len(s), -1),
                "rank": s[:, 0].astype(np.int32),
            }
        ),
    )


def lockstep(
    world: int,
    n_steps: int,
    compute_ms: dict[int, float] | float = 10.0,
    noise_ms: float = 0.2,
    buckets: int = 1,
    is_async: bool = False,
    group: tuple[int, ...] | None = None,
    data_ms: dict[int, float] | None = None,
    seed: int = 0,
    end_late_ms: dict[int, float] | None = None,
    extra_ms: Callable[[int, int], float] | None = None,
    thread_ms: Callable[[int, int], tuple[float, ...]] | None = None,
    transfer_ms: Callable[[int], float] | None = None,
) -> RunData:
    """Synchronous steps: compute, then `buckets` collectives that end together, or, with
    `end_late_ms`, later for some ranks (a ring whose slow link delivers to them last).
    `extra_ms(rank, step)`: more work for a rank in some steps (stalls, spans).
    `thread_ms(rank, step)`: the stepping thread's (ms on a CPU, ms in a run queue), and
    optionally the ms its cgroup was held by its CPU limit. `transfer_ms(step)`: how long
    the collectives take after the last arrival (2 ms)."""
    rng = np.random.default_rng(seed)
    members = group or tuple(range(world))
    steps, colls = [], []
    start = dict.fromkeys(range(world), 0)
    seq = 0
    for k in range(n_steps):
        arrive = {}
        for r in range(world):
            base = compute_ms[r] if isinstance(compute_ms, dict) else compute_ms
            d = (data_ms or {}).get(r, 0.0)
            extra = extra_ms(r, k) if extra_ms is not None else 0.0
            arrive[r] = start[r] + int((base + d + extra + abs(rng.normal(0, noise_ms))) * MS)
        last = max(arrive[r] for r in members)
        transfer = transfer_ms(k) if transfer_ms is not None else 2.0
        ends = {
            r: last + int((transfer + (end_late_ms or {}).get(r, 0.0)) * MS) for r in range(world)
        }
        for b in range(buckets):
            seq += 1
            for r in members:
                colls.append(
                    (
                        r,
                        "all_reduce",
                        0,
                        seq,
                        1 << 20,
                        arrive[r] + b * 1000,
                        ends[r] + b * 1000,
                        k,
                        is_async,
                    )
                )
        for r in range(world):
            d = (data_ms or {}).get(r, 0.0)
            end = ends[r] + buckets * 1000
            row = (r, k, start[r], end, int(d * MS), 0 if is_async else end - arrive[r])
            if thread_ms is not None:
                row += tuple(int(v * MS) for v in thread_ms(r, k))
            steps.append(row)
            start[r] = end
    return make_run(world, steps, colls, groups=[members])


def node_samples(rows: list[tuple[int, str, str, float]]) -> Columns:
    """Node-agent samples from (t_ns, metric, labels, value) rows."""
    return Columns(
        {
            "t_ns": np.array([r[0] for r in rows]),
            "name": np.array([r[1] for r in rows], object),
            "labels": np.array([r[2] for r in rows], object),
            "value": np.array([r[3] for r in rows], dtype=float),
        }
    )
