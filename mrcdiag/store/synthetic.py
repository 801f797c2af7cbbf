"""Synthetic runs in the real on-disk format, for scale tests, benchmarks and try-outs.

The model is synchronous data parallel training: each step every rank computes (base
time, noise, optional slowness), then meets the others in one gradient all-reduce that
ends a transfer time after the last rank arrives. Everything is written through the
same writers the hook uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrcdiag.store import layout, records, schema
from mrcdiag.store.records import ClockEstimate, Event, GroupMeta, RankMeta, RunMeta, WorldMeta
from mrcdiag.store.writer import JsonLines, StreamTable, write_json_atomic


@dataclass(frozen=True)
class SyntheticSpec:
    ranks: int = 8
    steps: int = 200
    ranks_per_host: int = 8
    compute_s: float = 0.100
    noise: float = 0.02  # relative, per rank and step (log-normal)
    transfer_s: float = 0.010
    allreduce_bytes: int = 100 << 20
    slow_ranks: tuple[int, ...] = ()
    slow_factor: float = 1.05  # compute time multiplier of the slow ranks
    # job-wide changes of pace: (from step, every rank's compute time multiplier from then)
    pace_changes: tuple[tuple[int, float], ...] = ()
    seed: int = 0


def write_synthetic_run(run_dir: Path, spec: SyntheticSpec) -> Path:
    """Write a whole run of `spec` into `run_dir` (created) and return it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    hosts = [f"node-{r // spec.ranks_per_host:04d}" for r in range(spec.ranks)]
    run = RunMeta(job="synthetic", command=("synthetic",), start="1970-01-01T00:00:00+00:00")
    write_json_atomic(run_dir / layout.RUN_FILE, run.to_json())
    world = WorldMeta.of_hosts(hosts, backend="synthetic", torch_version="")
    write_json_atomic(run_dir / layout.WORLD_FILE, world.to_json())
    step_start, arrive, end = _timeline(spec)
    cpu_s, cpu_wait_s, data_wait_s = _thread_clocks(spec, arrive - step_start)
    to_ns = lambda a: (a * 1e9).astype(np.int64) + _BASE_NS  # noqa: E731
    group = GroupMeta(0, "0", tuple(range(spec.ranks)), "synthetic")
    for r in range(spec.ranks):
        rank_dir = layout.rank_dir(run_dir, r)
        rank_dir.mkdir(parents=True, exist_ok=True)
        meta = RankMeta(
            rank=r,
            host=hosts[r],
            local_rank=r % spec.ranks_per_host,
            world_size=spec.ranks,
            pid=0,
            clock=ClockEstimate(0, 0, 0, "shared_clock"),
            attached_monotonic_ns=_BASE_NS,
        )
        write_json_atomic(rank_dir / layout.RANK_META_FILE, meta.to_json())
        _write_lines(rank_dir / layout.GROUPS_FILE, [group.to_json()])
        closed_ns = int(to_ns(end[-1:, r])[0])
        _write_lines(
            rank_dir / layout.EVENTS_FILE,
            [
                Event(records.EVENT_ATTACHED, _BASE_NS).to_json(),
                Event(records.EVENT_CLOSED, closed_ns, {"dropped": 0}).to_json(),
            ],
        )
        _write_table(
            rank_dir / layout.COLLECTIVES_FILE,
            schema.COLLECTIVE_SCHEMA,
            _collective_columns(spec, to_ns(arrive[:, r]), to_ns(end[:, r])),
        )
        _write_table(
            rank_dir / layout.STEPS_FILE,
            schema.STEP_SCHEMA,
            {
                "step": np.arange(spec.steps, dtype=np.int32),
                "t_start_ns": to_ns(step_start[:, r]),
                "t_end_ns": to_ns(end[:, r]),
                "data_wait_ns": (data_wait_s[:, r] * 1e9).astype(np.int64),
                "comm_ns": ((end[:, r] - arrive[:, r]) * 1e9).astype(np.int64),
                "n_collectives": np.ones(spec.steps, np.int32),
                "cpu_ns": (cpu_s[:, r] * 1e9).astype(np.int64),
                "cpu_wait_ns": (cpu_wait_s[:, r] * 1e9).astype(np.int64),
                "cpu_throttled_ns": np.zeros(spec.steps, np.int64),  # no CPU limit
                **{name: np.full(spec.steps, -1, np.int64) for name in schema.STEP_MEMORY_FIELDS},
            },
        )
    return run_dir


_BASE_NS = 10**12


def _timeline(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[step, rank] arrays of step start, all-reduce arrival and all-reduce end (s)."""
    rng = np.random.default_rng(spec.seed)
    factor = np.ones(spec.ranks)
    factor[list(spec.slow_ranks)] = spec.slow_factor
    compute = (
        spec.compute_s
        * factor[None, :]
        * rng.lognormal(0.0, spec.noise, size=(spec.steps, spec.ranks))
    )
    pace = np.ones(spec.steps)
    for from_step, multiplier in sorted(spec.pace_changes):
        pace[from_step:] = multiplier
    compute = compute * pace[:, None]
    step_start = np.zeros((spec.steps, spec.ranks))
    arrive = np.zeros((spec.steps, spec.ranks))
    end = np.zeros((spec.steps, spec.ranks))
    t = np.zeros(spec.ranks)
    for k in range(spec.steps):
        step_start[k] = t
        arrive[k] = t + compute[k]
        done = arrive[k].max() + spec.transfer_s * rng.lognormal(0.0, 0.05)
        end[k] = done + rng.uniform(0, 2e-5, size=spec.ranks)  # completion jitter
        t = end[k]
    return step_start, arrive, end


def _thread_clocks(
    spec: SyntheticSpec, compute_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[step, rank] seconds of the stepping thread on a CPU and waiting for one, and
    waiting for the DataLoader, as a healthy host's would read: most of the compute on
    the CPU, tens of microseconds in a run queue, a fraction of a millisecond of data
    wait (inside the compute time)."""
    rng = np.random.default_rng(spec.seed + 1)
    shape = compute_s.shape
    cpu = compute_s * rng.uniform(0.95, 0.99, size=shape)
    cpu_wait = 5e-5 * rng.lognormal(0.0, 0.5, size=shape)
    data_wait = 2e-4 * rng.lognormal(0.0, 0.5, size=shape)
    return cpu, cpu_wait, data_wait


def _collective_columns(
    spec: SyntheticSpec, arrive_ns: np.ndarray, end_ns: np.ndarray
) -> dict[str, np.ndarray]:
    """One DDP all-reduce per step, as the capture layer would have recorded it."""
    n = spec.steps
    return {
        "op": np.full(n, schema.OP_CODE["all_reduce"], np.uint8),
        "source": np.full(n, schema.SOURCE_CODE["ddp"], np.uint8),
        "group": np.zeros(n, np.int32),
        "seq": np.arange(1, n + 1, dtype=np.int64),
        "peer": np.full(n, -1, np.int32),
        "nbytes": np.full(n, spec.allreduce_bytes, np.int64),
        "dtype": np.full(n, schema.DTYPE_CODE["float32"], np.uint8),
        "is_async": np.ones(n, bool),
        "t_arrive_ns": arrive_ns,
        "t_end_ns": end_ns,
        "step": np.arange(n, dtype=np.int32),
    }


def _write_table(path: Path, table_schema: object, columns: dict[str, np.ndarray]) -> None:
    table = StreamTable(path, table_schema)  # type: ignore[arg-type]
    try:
        table.append_columns(columns)
    finally:
        table.close()


def _write_lines(path: Path, lines: list[dict]) -> None:
    log = JsonLines(path)
    try:
        for line in lines:
            log.append(line)
    finally:
        log.close()
