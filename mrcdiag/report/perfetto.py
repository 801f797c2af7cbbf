"""Chrome trace-event JSON (Perfetto, chrome://tracing): one process per rank.

Per rank: steps on thread 1, synchronous collectives on thread 2, asynchronous ones on
thread 3 (they overlap compute and each other), the step's DataLoader wait on thread 4
(recorded as a total per step, drawn from the step's start). Complete ("X") events, so
every slice is matched by construction; times in microseconds on rank 0's clock. GPU
and host samples of each node are counters on a process of their own.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from mrcdiag.analyzers import Analysis
from mrcdiag.store.schema import DTYPES, OPS

NODE_PID_BASE = 1_000_000
COUNTERS = (
    "mrcdiag_gpu_utilization_ratio",
    "mrcdiag_gpu_memory_bandwidth_utilization_ratio",
    "mrcdiag_gpu_sm_clock_hertz",
    "mrcdiag_host_cpu_utilization_ratio",
)


def trace_events(analysis: Analysis) -> list[dict[str, Any]]:
    run = analysis.run
    t0 = _origin(run)
    us = lambda ns: (int(ns) - t0) / 1e3  # noqa: E731
    events: list[dict[str, Any]] = []
    for rank, info in run.ranks.items():
        events.append(
            {
                "ph": "M",
                "name": "process_name",
                "pid": rank,
                "tid": 0,
                "args": {"name": f"rank {rank} ({info.host})"},
            }
        )
        for tid, name in (
            (1, "steps"),
            (2, "collectives"),
            (3, "async collectives"),
            (4, "data wait"),
        ):
            events.append(
                {"ph": "M", "name": "thread_name", "pid": rank, "tid": tid, "args": {"name": name}}
            )
    steps = run.steps
    for i in range(len(steps)):
        rank, start = int(steps["rank"][i]), int(steps["t_start_ns"][i])
        dur = (int(steps["t_end_ns"][i]) - start) / 1e3
        events.append(
            {
                "ph": "X",
                "name": f"step {int(steps['step'][i])}",
                "cat": "step",
                "pid": rank,
                "tid": 1,
                "ts": us(start),
                "dur": max(dur, 0.0),
                "args": {
                    "data_wait_us": int(steps["data_wait_ns"][i]) / 1e3,
                    "blocked_in_collectives_us": int(steps["comm_ns"][i]) / 1e3,
                },
            }
        )
        wait = int(steps["data_wait_ns"][i]) / 1e3
        if wait > 0:
            events.append(
                {
                    "ph": "X",
                    "name": "data wait",
                    "cat": "data",
                    "pid": rank,
                    "tid": 4,
                    "ts": us(start),
                    "dur": wait,
                }
            )
    events += _collectives(analysis, us)
    events += _counters(run, us)
    return events


def _collectives(analysis: Analysis, us: Any) -> list[dict[str, Any]]:
    run = analysis.run
    coll = run.collectives
    out = []
    ended = np.flatnonzero(coll["t_end_ns"] > 0)
    record_wait_ns = analysis.record_wait_ns()
    for i in ended:
        rank, group, seq = int(coll["rank"][i]), int(coll["group"][i]), int(coll["seq"][i])
        op = OPS[int(coll["op"][i])]
        start, end = int(coll["t_arrive_ns"][i]), int(coll["t_end_ns"][i])
        wait = min(float(record_wait_ns[i]), end - start)
        args = {
            "op": op,
            "bytes": int(coll["nbytes"][i]),
            "dtype": DTYPES[int(coll["dtype"][i])],
            "group": run.groups[group].name if group < len(run.groups) else str(group),
            "seq": seq,
            "wait_us": wait / 1e3,
            "transfer_us": (end - start - wait) / 1e3,
        }
        if int(coll["peer"][i]) >= 0:
            args["peer"] = int(coll["peer"][i])
        out.append(
            {
                "ph": "X",
                "name": op,
                "cat": "collective",
                "pid": rank,
                "tid": 3 if bool(coll["is_async"][i]) else 2,
                "ts": us(start),
                "dur": (end - start) / 1e3,
                "args": args,
            }
        )
    return out


def _counters(run: Any, us: Any) -> list[dict[str, Any]]:
    out = []
    for index, (host, samples) in enumerate(sorted(run.node_samples.items())):
        pid = NODE_PID_BASE + index
        out.append(
            {
                "ph": "M",
                "name": "process_name",
                "pid": pid,
                "tid": 0,
                "args": {"name": f"node {host}"},
            }
        )
        for name in COUNTERS:
            mask = samples["name"] == name
            for t, labels, value in zip(
                samples["t_ns"][mask], samples["labels"][mask], samples["value"][mask], strict=True
            ):
                out.append(
                    {
                        "ph": "C",
                        "name": f"{name.removeprefix('mrcdiag_')} {labels}",
                        "pid": pid,
                        "tid": 0,
                        "ts": us(t),
                        "args": {"value": float(value)},
                    }
                )
    return out


def _origin(run: Any) -> int:
    columns = [run.steps["t_start_ns"], run.collectives["t_arrive_ns"]]
    columns += [samples["t_ns"] for samples in run.node_samples.values()]
    starts = [int(v.min()) for v in columns if len(v)]
    return min(starts) if starts else 0


def render_perfetto(analysis: Analysis) -> str:
    return json.dumps({"traceEvents": trace_events(analysis), "displayTimeUnit": "ms"})
