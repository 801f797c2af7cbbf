"""Rank collector: the training processes' own figures, read from their run-directory segments.

The hook does no work for Prometheus: the agent tails what the ranks of its node already
write and keeps histograms per rank (step time) and per rank, op and message-size
bucket (collective time). Series stay bounded: no per-step or per-call series.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from mrcdiag import metrics
from mrcdiag.metrics import SIZE_LABELS, size_bucket
from mrcdiag.store import layout, schema
from mrcdiag.store.arrays import numpy_of
from mrcdiag.store.records import RankMeta
from mrcdiag.store.tail import StreamTail

STEP_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COLLECTIVE_BUCKETS_S = (1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


# step column -> (family, metric, help): the rank's device allocator at its last step
_MEMORY_METRICS = {
    "mem_allocated_bytes": (
        GaugeMetricFamily, metrics.RANK_MEMORY_ALLOCATED, "Device memory the rank's tensors hold"
    ),
    "mem_reserved_bytes": (
        GaugeMetricFamily, metrics.RANK_MEMORY_RESERVED, "Device memory the allocator reserved"
    ),
    "mem_peak_allocated_bytes": (
        GaugeMetricFamily, metrics.RANK_MEMORY_PEAK_ALLOCATED, "Highest allocated so far"
    ),
    "mem_peak_reserved_bytes": (
        GaugeMetricFamily, metrics.RANK_MEMORY_PEAK_RESERVED, "Highest reserved so far"
    ),
    "mem_total_bytes": (GaugeMetricFamily, metrics.RANK_MEMORY_TOTAL, "The rank's device memory"),
    "mem_alloc_retries": (
        CounterMetricFamily, metrics.RANK_MEMORY_ALLOC_RETRIES,
        "Allocations retried after freeing the cache (each synchronizes the device)",
    ),
    "mem_ooms": (CounterMetricFamily, metrics.RANK_MEMORY_OOMS, "Out-of-memory errors raised"),
}  # fmt: skip


class _Histogram:
    def __init__(self, edges: tuple[float, ...]) -> None:
        self.edges = np.array(edges)
        self.counts = np.zeros(len(edges) + 1, dtype=np.int64)
        self.sum = 0.0

    def add(self, values: np.ndarray) -> None:
        if len(values):
            self.counts += np.bincount(
                np.searchsorted(self.edges, values, side="left"), minlength=len(self.counts)
            )
            self.sum += float(values.sum())

    def buckets(self) -> list[tuple[str, float]]:
        cumulative = np.cumsum(self.counts)
        out = [(repr(float(e)), float(c)) for e, c in zip(self.edges, cumulative, strict=False)]
        out.append(("+Inf", float(cumulative[-1])))
        return out


@dataclass
class _RankState:
    rank: int
    local_rank: int
    pid: int
    steps: StreamTail
    collectives: StreamTail
    step_hist: _Histogram = field(default_factory=lambda: _Histogram(STEP_BUCKETS_S))
    coll_hist: dict[tuple[int, int], _Histogram] = field(default_factory=dict)
    coll_bytes: dict[int, int] = field(default_factory=dict)
    data_wait_s: float = 0.0
    blocked_s: float = 0.0
    n_steps: int = 0
    last_step_unix_s: float = 0.0
    offset_unix_ns: int = 0  # monotonic -> unix for this rank
    memory: dict[str, int] = field(default_factory=dict)  # its last step's, where known


class RankCollector:
    """Per-rank metrics of the ranks on this node, from their segments."""

    def __init__(self, run_dir: Path, job: str, node: str | None = None) -> None:
        self.run_dir = run_dir
        self.job = job
        self.node = node or socket.gethostname()
        self.ranks: dict[int, _RankState] = {}

    def _discover(self) -> None:
        for rank_dir in layout.rank_dirs(self.run_dir):
            try:
                meta = RankMeta.from_json(
                    json.loads((rank_dir / layout.RANK_META_FILE).read_text())
                )
            except (OSError, ValueError, KeyError):
                continue  # not written yet, or written by a rank that is still attaching
            if meta.rank in self.ranks or meta.host != self.node:
                continue
            self.ranks[meta.rank] = _RankState(
                rank=meta.rank,
                local_rank=meta.local_rank,
                pid=meta.pid if meta.pid is not None else -1,
                steps=StreamTail(rank_dir / layout.STEPS_FILE),
                collectives=StreamTail(rank_dir / layout.COLLECTIVES_FILE),
                offset_unix_ns=meta.monotonic_to_unix_ns,
            )

    def rank_processes(self) -> list[tuple[int, int, int]]:
        self._discover()
        return [(s.rank, s.local_rank, s.pid) for s in self.ranks.values()]

    def update(self) -> None:
        """Fold in what the ranks wrote since the last call."""
        self._discover()
        for state in self.ranks.values():
            for batch in state.steps.read_new():
                start = numpy_of(batch.column("t_start_ns"))
                end = numpy_of(batch.column("t_end_ns"))
                state.step_hist.add((end - start) / 1e9)
                state.data_wait_s += numpy_of(batch.column("data_wait_ns")).sum() / 1e9
                state.blocked_s += numpy_of(batch.column("comm_ns")).sum() / 1e9
                state.n_steps += batch.num_rows
                if batch.num_rows:
                    state.last_step_unix_s = (int(end.max()) + state.offset_unix_ns) / 1e9
                for name in schema.STEP_MEMORY_FIELDS:
                    if name in batch.column_names and batch.num_rows:
                        value = batch.column(name)[-1].as_py()
                        if value is not None and value >= 0:
                            state.memory[name] = int(value)
            for batch in state.collectives.read_new():
                ops = numpy_of(batch.column("op"))
                nbytes = numpy_of(batch.column("nbytes"))
                arrive = numpy_of(batch.column("t_arrive_ns"))
                end = numpy_of(batch.column("t_end_ns"))
                done = end > 0
                durations = np.where(done, end - arrive, 0) / 1e9
                buckets = size_bucket(nbytes)
                for op in np.unique(ops):
                    sel = ops == op
                    state.coll_bytes[int(op)] = state.coll_bytes.get(int(op), 0) + int(
                        nbytes[sel].sum()
                    )
                    for b in np.unique(buckets[sel]):
                        hist = state.coll_hist.setdefault(
                            (int(op), int(b)), _Histogram(COLLECTIVE_BUCKETS_S)
                        )
                        hist.add(durations[sel & (buckets == b) & done])

    def collect(self) -> Iterator[Metric]:
        try:
            self.update()
        except Exception:  # a torn file must not break the scrape
            pass
        base = ["job", "node", "rank", "local_rank"]
        step = HistogramMetricFamily(
            metrics.STEP_DURATION, "Training step time per rank", labels=base
        )
        steps = CounterMetricFamily(
            metrics.STEPS.removesuffix("_total"), "Steps completed per rank", labels=base
        )
        last = GaugeMetricFamily(
            metrics.LAST_STEP_TIMESTAMP,
            "Unix time the rank last ended a step",
            labels=base,
        )
        data = CounterMetricFamily(
            metrics.DATA_WAIT.removesuffix("_total"), "Time blocked in the DataLoader", labels=base
        )
        blocked = CounterMetricFamily(
            metrics.COLLECTIVE_BLOCKED.removesuffix("_total"),
            "Time the training thread was blocked in collectives",
            labels=base,
        )
        coll = HistogramMetricFamily(
            metrics.COLLECTIVE_DURATION,
            "Time from a rank's arrival at a collective to its completion",
            labels=base + ["op", "size"],
        )
        coll_bytes = CounterMetricFamily(
            metrics.COLLECTIVE_BYTES.removesuffix("_total"),
            "Bytes moved by collectives (nccl-tests size)",
            labels=base + ["op"],
        )
        memory = {
            field_name: cls(name.removesuffix("_total"), help_text, labels=base)
            for field_name, (cls, name, help_text) in _MEMORY_METRICS.items()
        }
        for s in self.ranks.values():
            values = [self.job, self.node, str(s.rank), str(s.local_rank)]
            for field_name, value in s.memory.items():
                memory[field_name].add_metric(values, value)
            step.add_metric(values, s.step_hist.buckets(), s.step_hist.sum)
            steps.add_metric(values, s.n_steps)
            data.add_metric(values, s.data_wait_s)
            blocked.add_metric(values, s.blocked_s)
            if s.last_step_unix_s:
                last.add_metric(values, s.last_step_unix_s)
            for (op, bucket), hist in sorted(s.coll_hist.items()):
                coll.add_metric(
                    values + [schema.OPS[op], SIZE_LABELS[bucket]], hist.buckets(), hist.sum
                )
            for op, total in sorted(s.coll_bytes.items()):
                coll_bytes.add_metric(values + [schema.OPS[op]], total)
        yield from (step, steps, last, data, blocked, coll, coll_bytes)
        yield from (m for m in memory.values() if m.samples)
        up = GaugeMetricFamily(
            metrics.AGENT_UP, "1 while the node agent runs", labels=["job", "node"]
        )
        up.add_metric([self.job, self.node], 1.0)
        yield up
        yield GaugeMetricFamily(
            metrics.AGENT_SCRAPE_TIMESTAMP,
            "When this scrape was served",
            value=time.time(),
        )

    def describe(self) -> list[Metric]:
        return []
