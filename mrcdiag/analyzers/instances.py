"""Collective instances: the same (group, sequence number) seen from every rank.

The rank that arrives last at an instance is the one every other rank waited for. With
clocks aligned, each rank's time in the collective splits into *wait* (until the last
arrival) and *transfer* (from the last arrival to its own completion). This is the
shared basis of the straggler, idle and interconnect analyzers.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np

from mrcdiag.analyzers.executor import INLINE
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
    # per record: its row in run.collectives (a whole slice where every row is a
    # collective, as in a job without point-to-point: no row-sized array of them)
    record_index: np.ndarray | slice
    # the records instance by instance, each instance's by rank: rows of `records`;
    # instance i's members are member_order[member_start[i] : member_start[i] + n_arrived[i]]
    # (int32 below 2**31 records: 4 bytes a record, 130 MB at 16384 ranks x 2000 steps)
    member_order: np.ndarray
    member_start: np.ndarray

    def members(self, instances: np.ndarray, count: int) -> np.ndarray:
        """[len(instances), count] rows of `records`: the members, by rank, of instances
        that all have `count` of them."""
        if len(instances) and _one_stretch(self.member_start, instances, count):
            # instances in a row, all of `count` members: their members lie in a row too
            start = int(self.member_start[instances[0]])
            return self.member_order[start : start + len(instances) * count].reshape(-1, count)
        at = self.member_start[instances][:, None] + np.arange(count)[None, :]
        return self.member_order[at]


def _one_stretch(member_start: np.ndarray, instances: np.ndarray, count: int) -> bool:
    """Whether `instances` are consecutive ids in order whose members (`count` each) are
    one stretch of member_order."""
    n = len(instances)
    return (
        int(instances[-1]) - int(instances[0]) == n - 1
        and bool((np.diff(instances) == 1).all())
        and int(member_start[instances[-1]]) - int(member_start[instances[0]]) == (n - 1) * count
    )


def collective_instances(run: RunData) -> Instances:
    inst, transfer = instances_and_transfer(run)
    inst.transfer_ns = transfer.result()
    return inst


def instances_and_transfer(
    run: RunData, beside: Executor = INLINE
) -> tuple[Instances, Future[np.ndarray]]:
    """The instances, and their transfer times (per instance, the median over members of
    end - last arrival) worked out on `beside` (inst.transfer_ns is NaN until the caller
    sets it from the future)."""
    coll = run.collectives
    mask = ~np.isin(coll["op"], P2P_CODES) if len(coll) else np.zeros(0, dtype=bool)
    # a new set of columns (for "instance"), copied only where some rows are left out
    records = Columns(dict(coll.data)) if mask.all() else coll.where(mask)
    record_index = slice(None) if mask.all() else np.flatnonzero(mask)
    inverse, group, seq = _instance_ids(records["group"], records["seq"])
    n = len(group)
    arrive = records["t_arrive_ns"]
    last = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, inverse, arrive)
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, inverse, arrive)
    counts = np.bincount(inverse, minlength=n)
    member_order = _member_order(records["rank"], inverse)
    member_start = np.cumsum(counts) - counts
    # last rank: among records whose arrival equals the instance's last arrival
    wait = last[inverse]  # the instance's last arrival, then less the record's own
    is_last = arrive == wait
    np.subtract(wait, arrive, out=wait)
    last_rank = np.full(n, -1, dtype=np.int32)
    last_rank[inverse[is_last]] = records["rank"][is_last]
    first_index = member_order[member_start] if n else np.zeros(0, np.int64)
    step = np.zeros(n, dtype=np.int32)
    step[inverse[is_last]] = records["step"][is_last]
    records.data["instance"] = inverse.astype(_index_dtype(n), copy=False)
    out = Instances(
        records=records,
        n_instances=n,
        group=group,
        seq=seq,
        op=records["op"][first_index] if n else np.zeros(0, np.uint8),
        nbytes=records["nbytes"][first_index] if n else np.zeros(0, np.int64),
        n_arrived=counts,
        last_arrival_ns=last,
        first_arrival_ns=first,
        last_rank=last_rank,
        transfer_ns=np.full(n, np.nan),
        wait_ns=wait,
        step=step,
        record_index=record_index,
        member_order=member_order,
        member_start=member_start,
    )
    return out, beside.submit(_transfer_ns, out)


def _instance_ids(group: np.ndarray, seq: np.ndarray) -> tuple[np.ndarray, ...]:
    """(instance of each record, group and seq of each instance), instances ordered by
    (group, seq). Sequence numbers run densely within a group, so the instances are
    found by counting into each group's seq range, without sorting every record; a
    sparse range (ids far apart) falls back to np.unique."""
    if not len(group):
        return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64)
    n_groups = int(group.max()) + 1
    if n_groups == 1 and int(group.min()) == 0:  # one group: no scatter per record
        lo, hi = np.array([seq.min()], np.int64), np.array([seq.max()], np.int64)
    else:
        lo = np.full(n_groups, np.iinfo(np.int64).max, dtype=np.int64)
        hi = np.full(n_groups, -1, dtype=np.int64)
        np.minimum.at(lo, group, seq)
        np.maximum.at(hi, group, seq)
    span = np.where(hi >= lo, hi - lo + 1, 0)
    if int(group.min()) < 0 or int(span.sum()) > 4 * len(group) + 1024:
        key = group.astype(np.int64) << 40 | seq.astype(np.int64)
        uniq, inverse = np.unique(key, return_inverse=True)
        return inverse, (uniq >> 40).astype(np.int32), uniq & ((1 << 40) - 1)
    base = np.cumsum(span) - span
    # one group (a plain DDP job): no lookups per record
    slot = seq - lo[0] if n_groups == 1 else base[group] + (seq - lo[group])
    present = np.bincount(slot, minlength=int(span.sum())) > 0
    slots = np.flatnonzero(present)
    slot_group = np.searchsorted(base + span, slots, side="right").astype(np.int32)
    # every slot taken (no sequence number missing): each slot is its instance
    inverse = slot if len(slots) == len(present) else (np.cumsum(present) - 1)[slot]
    return inverse, slot_group, (slots - base[slot_group] + lo[slot_group])


def _index_dtype(n: int) -> type:
    """The narrowest of int32 and int64 that holds indices below `n`."""
    return np.int32 if n < 2**31 else np.int64


def _member_order(rank: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Rows by instance, then by rank: one stable sort of the instance ids of rows that
    come rank after rank (as a run's records do; others are put so first)."""
    if len(rank) and not bool(np.all(rank[1:] >= rank[:-1])):
        by_rank = np.argsort(rank, kind="stable")
        order = by_rank[np.argsort(inverse[by_rank], kind="stable")]
    else:
        order = np.argsort(inverse, kind="stable")
    return order.astype(_index_dtype(len(rank)), copy=False)


def member_blocks(inst: Instances) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(instances, their members' rows of inst.records as [instance, member]) for each
    count of members, about CHUNK_RECORDS records at a time: what is worked out per
    member then takes tens of MB at a time, not arrays the size of the run."""
    for count in np.unique(inst.n_arrived) if inst.n_instances else []:
        if count == 0:
            continue
        which = np.flatnonzero(inst.n_arrived == count)
        per_chunk = max(1, CHUNK_RECORDS // int(count))
        for lo in range(0, len(which), per_chunk):
            chunk = which[lo : lo + per_chunk]
            yield chunk, inst.members(chunk, int(count))


# records worked out at a time in a block of instances (member_blocks)
CHUNK_RECORDS = 1 << 20


def _transfer_ns(inst: Instances) -> np.ndarray:
    """Per instance, the median over its members of the time from the last arrival to
    the member's end (NaNs ignored: an end not seen, or before the last arrival).
    Instances with the same number of members are one dense block, whose rows numpy
    medians by selection instead of sorting every record."""
    out = np.full(inst.n_instances, np.nan)
    end = inst.records["t_end_ns"]
    for which, members in member_blocks(inst):
        ends = end[members]
        block = np.subtract(ends, inst.last_arrival_ns[which][:, None]).astype(np.float64)
        block[(ends <= 0) | (block < 0)] = np.nan
        holes = np.isnan(block).any(axis=1)
        out[which[~holes]] = np.median(block[~holes], axis=1)
        if holes.any():
            with warnings.catch_warnings():  # an instance no member timed is NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                out[which[holes]] = np.nanmedian(block[holes], axis=1)
    return out


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
