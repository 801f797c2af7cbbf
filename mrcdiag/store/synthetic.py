"""Synthetic runs in the real on-disk format, for scale tests, benchmarks and try-outs.

The model is synchronous data parallel training: each step every rank computes (base
time, noise, optional slowness), then meets the others in one gradient all-reduce that
ends a transfer time after the last rank arrives. Everything is written through the
same writers the hook uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrcdiag.store import schema
from mrcdiag.store.writer import StreamTable, write_json_atomic


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
    seed: int = 0


def write_synthetic_run(run_dir: Path, spec: SyntheticSpec) -> Path:
    rng = np.random.default_rng(spec.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    hosts = [f"node-{r // spec.ranks_per_host:04d}" for r in range(spec.ranks)]
    per_host: dict[str, list[int]] = {}
    for r, h in enumerate(hosts):
        per_host.setdefault(h, []).append(r)
    write_json_atomic(
        run_dir / schema.RUN_FILE,
        {
            "schema": 1,
            "job": "synthetic",
            "command": ["synthetic"],
            "start": "1970-01-01T00:00:00+00:00",
        },
    )
    write_json_atomic(
        run_dir / schema.WORLD_FILE,
        {
            "schema": 1,
            "world_size": spec.ranks,
            "hosts": sorted(per_host),
            "ranks_per_host": per_host,
            "backend": "synthetic",
        },
    )
    factor = np.ones(spec.ranks)
    factor[list(spec.slow_ranks)] = spec.slow_factor
    compute = (
        spec.compute_s
        * factor[None, :]
        * rng.lognormal(0.0, spec.noise, size=(spec.steps, spec.ranks))
    )
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
    base_ns = 10**12
    to_ns = lambda a: (a * 1e9).astype(np.int64) + base_ns  # noqa: E731
    steps_idx = np.arange(spec.steps, dtype=np.int32)
    for r in range(spec.ranks):
        rank_dir = run_dir / schema.RANKS_DIR / f"rank-{r:05d}"
        rank_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            rank_dir / schema.RANK_META_FILE,
            {
                "schema": 1,
                "rank": r,
                "local_rank": r % spec.ranks_per_host,
                "world_size": spec.ranks,
                "host": hosts[r],
                "pid": 0,
                "clock": {
                    "offset_ns": 0,
                    "method": "shared_clock",
                    "uncertainty_ns": 0,
                    "measured_offset_ns": 0,
                },
                "attached_monotonic_ns": base_ns,
                "attached_unix_ns": 0,
            },
        )
        (rank_dir / schema.GROUPS_FILE).write_text(
            json.dumps(
                {"index": 0, "name": "0", "ranks": list(range(spec.ranks)), "backend": "synthetic"}
            )
            + "\n"
        )
        (rank_dir / schema.EVENTS_FILE).write_text(
            json.dumps({"event": "attached", "t_ns": base_ns})
            + "\n"
            + json.dumps({"event": "closed", "t_ns": int(to_ns(end[-1:, r])[0]), "dropped": 0})
            + "\n"
        )
        coll = StreamTable(rank_dir / schema.COLLECTIVES_FILE, schema.COLLECTIVE_SCHEMA)
        coll.append_columns(
            {
                "op": np.zeros(spec.steps, np.uint8),
                "source": np.full(spec.steps, schema.SOURCE_CODE["ddp"], np.uint8),
                "group": np.zeros(spec.steps, np.int32),
                "seq": np.arange(1, spec.steps + 1, dtype=np.int64),
                "peer": np.full(spec.steps, -1, np.int32),
                "nbytes": np.full(spec.steps, spec.allreduce_bytes, np.int64),
                "dtype": np.full(spec.steps, schema.DTYPE_CODE["float32"], np.uint8),
                "is_async": np.ones(spec.steps, bool),
                "t_arrive_ns": to_ns(arrive[:, r]),
                "t_end_ns": to_ns(end[:, r]),
                "step": steps_idx,
            }
        )
        coll.close()
        st = StreamTable(rank_dir / schema.STEPS_FILE, schema.STEP_SCHEMA)
        st.append_columns(
            {
                "step": steps_idx,
                "t_start_ns": to_ns(step_start[:, r]),
                "t_end_ns": to_ns(end[:, r]),
                "data_wait_ns": np.zeros(spec.steps, np.int64),
                "comm_ns": ((end[:, r] - arrive[:, r]) * 1e9).astype(np.int64),
                "n_collectives": np.ones(spec.steps, np.int32),
            }
        )
        st.close()
    return run_dir
