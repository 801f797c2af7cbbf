"""Collective instances: the same (group, sequence number) seen from every rank.

The rank that arrives last at an instance is the one every other rank waited for. With
clocks aligned, each rank's time in the collective splits into *wait* (until the last
arrival) and *transfer* (from the last arrival to its own completion). This is the
shared basis of the straggler, idle and interconnect analyzers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrcdiag.store.reader import Columns, RunData
from mrcdiag.store.schema import OP_CODE, POINT_TO_POINT_OPS

P2P_CODES = np.array(sorted(OP_CODE[name] for name in POINT_TO_POINT_OPS), dtype=np.uint8)


@dataclass
class Instances:
    """Per-record columns joined with per-instance facts, for collectives only."""

    records: Columns  # collective records (no p2p), with "instance" index column
    n_instances: int
    group: np.ndarray  # per instance
    seq: np.ndarray
    op: np.ndarray
    nbytes: np.ndarray
    n_arrived: np.ndarray  # ranks that recorded this instance
    last_arrival_ns: np.ndarray
    first_arrival_ns: np.ndarray
    last_rank: np.ndarray  # rank that arrived last
    transfer_ns: np.ndarray  # median over ranks of end - last arrival; NaN if unknown
    wait_ns: np.ndarray  # per record: last arrival - own arrival
    step: np.ndarray  # per instance: the step of the last arrival
    record_index: np.ndarray  # per record: its row in run.collectives


def collective_instances(run: RunData) -> Instances:
    coll = run.collectives
    mask = ~np.isin(coll["op"], P2P_CODES) if len(coll) else np.zeros(0, dtype=bool)
    records = coll.where(mask)
    record_index = np.flatnonzero(mask)
    key = records["group"].astype(np.int64) << 40 | records["seq"].astype(np.int64)
    uniq, inverse = np.unique(key, return_inverse=True)
    n = len(uniq)
    arrive = records["t_arrive_ns"]
    last = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, inverse, arrive)
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, inverse, arrive)
    counts = np.bincount(inverse, minlength=n)
    # last rank: among records whose arrival equals the instance's last arrival
    is_last = arrive == last[inverse]
    last_rank = np.full(n, -1, dtype=np.int32)
    last_rank[inverse[is_last]] = records["rank"][is_last]
    wait = last[inverse] - arrive
    end = records["t_end_ns"]
    transfer_each = np.where(end > 0, end - last[inverse], -1).astype(np.float64)
    transfer_each[transfer_each < 0] = np.nan
    transfer = median_by(inverse, transfer_each, n)
    first_index = np.zeros(n, dtype=np.int64)
    first_index[inverse[::-1]] = np.arange(len(inverse))[::-1]
    step = np.zeros(n, dtype=np.int32)
    step[inverse[is_last]] = records["step"][is_last]
    records.data["instance"] = inverse.astype(np.int64)
    return Instances(
        records=records,
        n_instances=n,
        group=(uniq >> 40).astype(np.int32),
        seq=(uniq & ((1 << 40) - 1)).astype(np.int64),
        op=records["op"][first_index] if n else np.zeros(0, np.uint8),
        nbytes=records["nbytes"][first_index] if n else np.zeros(0, np.int64),
        n_arrived=counts,
        last_arrival_ns=last,
        first_arrival_ns=first,
        last_rank=last_rank,
        transfer_ns=transfer,
        wait_ns=wait,
        step=step,
        record_index=record_index,
    )


def median_by(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Median of `values` per index (NaNs ignored) without a Python loop over groups."""
    out = np.full(n, np.nan)
    if len(values) == 0 or n == 0:
        return out
    valid = ~np.isnan(values)
    idx, vals = index[valid], values[valid]
    counts = np.bincount(idx, minlength=n)[:n]
    if not len(vals) or counts.max() <= 1:  # one value a group: its own median
        out[idx] = vals
        return out
    # by group, then by value: each value's place among all values, then one plain sort
    # of group * m + place (unique keys), twice as fast as a value sort followed by a
    # stable group sort, and exact (a float key mixing both would round)
    m = len(vals)
    place = np.empty(m, dtype=np.int64)
    place[np.argsort(vals, kind="quicksort")] = np.arange(m)
    order = np.argsort(idx.astype(np.int64) * m + place, kind="quicksort")
    del place
    vals = vals[order]
    ends = np.cumsum(counts)
    starts = ends - counts
    has = ends > starts
    lo = (starts + (ends - starts - 1) // 2)[has]
    hi = (starts + (ends - starts) // 2)[has]
    out[has] = (vals[lo] + vals[hi]) / 2.0
    return out
