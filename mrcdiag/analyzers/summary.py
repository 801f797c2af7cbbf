"""The run in numbers: step time per rank, communication share, bandwidth per op."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from mrcdiag.analyzers.common import (
    column_view,
    job_step_time,
    nan_median_rows,
    nan_percentile_rows,
)
from mrcdiag.analyzers.instances import CHUNK_RECORDS, P2P_CODES, Instances
from mrcdiag.analyzers.lateness import RankStepMatrix
from mrcdiag.store.reader import RunData
from mrcdiag.store.schema import OP_CODE, OPS, SOURCES, busbw_factor


@dataclass(frozen=True)
class RankSteps:
    rank: int
    host: str
    steps: int
    step_time_p50_s: float
    step_time_p90_s: float
    data_wait_fraction: float
    comm_fraction: float
    # its device's highest reserved memory over the device's total (None: not known)
    memory_peak_of_total: float | None = None


@dataclass(frozen=True)
class OpStats:
    op: str
    group: str  # the group's label: mesh dimension or description, and its ranks
    group_size: int
    calls: int  # instances (one call on every rank of the group)
    bytes_total: int  # per rank
    time_total_s: float  # mean over ranks of time inside the op
    wait_total_s: float  # of which waiting for the last rank to arrive
    busbw_median_gbps: float | None  # GB/s, from the transfer part only


@dataclass(frozen=True)
class RankTimeSplit:
    """Where one rank's steady steps went, in seconds summed over those steps."""

    rank: int
    step_time_s: float
    compute_s: float  # the rest: its own work
    data_wait_s: float  # blocked in its DataLoader
    exposed_comm_s: float  # blocked in collective transfers nothing overlapped
    waiting_s: float  # at collectives, for peers that arrived later


@dataclass(frozen=True)
class PeerStats:
    """Point-to-point traffic from one rank to another (pipeline stages, ring exchanges)."""

    sender: int
    receiver: int
    sends: int  # operations recorded on the sender's side
    receives: int  # on the receiver's side
    bytes_total: int  # sent
    send_time_s: float  # total time the sender spent in them
    receive_time_s: float  # total time the receiver spent in them (waiting for the data)


@dataclass(frozen=True)
class Coverage:
    """What the run's records hold, by who issued them: how complete the capture was."""

    by_source: dict[str, int]  # collectives (not point-to-point) by source
    point_to_point: int
    incomplete: int  # async operations that never completed before the rank detached
    dropped: int  # records the writer could not keep up with


@dataclass(frozen=True)
class Summary:
    steps: int
    duration_s: float
    step_time_p50_s: float | None
    step_time_p90_s: float | None
    comm_fraction: float | None
    data_wait_fraction: float | None
    per_rank: list[RankSteps]
    per_op: list[OpStats]
    time_split: list[RankTimeSplit]
    per_peer: list[PeerStats]
    coverage: Coverage


def time_split(m: RankStepMatrix, steady: np.ndarray) -> list[RankTimeSplit]:
    """Each rank's steady steps split into compute, data wait, exposed communication and
    waiting on peers (time blocked in collectives beyond the wait is the transfer)."""
    if len(steady) == 0:
        return []
    cols = column_view(steady)
    duration = np.nansum(m.duration_s[:, cols], axis=1)
    wait = np.nansum(m.wait_s[:, cols], axis=1)
    data = np.nansum(m.data_wait_s[:, cols], axis=1)
    exposed = np.nansum(np.clip(m.blocked_s[:, cols] - m.wait_s[:, cols], 0, None), axis=1)
    compute = np.clip(duration - wait - data - exposed, 0, None)
    return [
        RankTimeSplit(int(r), float(d), float(c), float(dw), float(e), float(w))
        for r, d, c, dw, e, w in zip(m.ranks, duration, compute, data, exposed, wait, strict=True)
    ]


def summarize(
    run: RunData, inst: Instances, m: RankStepMatrix, steady: np.ndarray, busbw: np.ndarray
) -> Summary:
    """`steady`: the step columns after warm-up; `busbw`: per instance, GB/s."""
    n_steps = m.duration_s.shape[1]
    keep = column_view(steady)
    duration = m.duration_s[:, keep]
    data = m.data_wait_s[:, keep]
    blocked = m.blocked_s[:, keep]
    per_rank = []
    with warnings.catch_warnings():  # ranks with no steady step have all-NaN rows
        warnings.simplefilter("ignore", RuntimeWarning)
        p50 = nan_median_rows(duration)
        p90 = nan_percentile_rows(duration, 90) if duration.size else np.zeros(len(duration))
        total = np.nansum(duration, axis=1)
        counts = np.sum(~np.isnan(duration), axis=1)
        data_frac = np.nansum(data, axis=1) / np.where(total > 0, total, np.nan)
        comm_frac = np.nansum(blocked, axis=1) / np.where(total > 0, total, np.nan)
        job = job_step_time(duration)
    for row, rank in enumerate(m.ranks):
        if counts[row] == 0:
            continue
        per_rank.append(
            RankSteps(
                rank=int(rank),
                host=run.host_of(int(rank)),
                steps=int(counts[row]),
                step_time_p50_s=float(p50[row]),
                step_time_p90_s=float(p90[row]),
                data_wait_fraction=_or_zero(data_frac[row]),
                comm_fraction=_or_zero(comm_frac[row]),
                memory_peak_of_total=_known(m.mem_peak_of_total, row),
            )
        )
    job = job[~np.isnan(job)]
    grand = float(np.nansum(duration))
    return Summary(
        steps=n_steps,
        duration_s=_duration_s(run),
        step_time_p50_s=float(np.median(job)) if len(job) else None,
        step_time_p90_s=float(np.percentile(job, 90)) if len(job) else None,
        comm_fraction=float(np.nansum(blocked) / grand) if grand > 0 else None,
        data_wait_fraction=float(np.nansum(data) / grand) if grand > 0 else None,
        per_rank=per_rank,
        per_op=op_stats(run, inst, busbw),
        time_split=time_split(m, steady),
        per_peer=peer_stats(run),
        coverage=coverage(run),
    )


def _known(values: np.ndarray | None, row: int) -> float | None:
    if values is None or not np.isfinite(values[row]):
        return None
    return round(float(values[row]), 4)


def _or_zero(value: float) -> float:
    return 0.0 if value != value else float(value)  # NaN is not equal to itself


_SENDS = np.array([OP_CODE["send"], OP_CODE["isend"]], dtype=np.uint8)
_RECEIVES = np.array([OP_CODE["recv"], OP_CODE["irecv"]], dtype=np.uint8)


def peer_stats(run: RunData) -> list[PeerStats]:
    """Point-to-point operations per (sender, receiver) pair, both sides counted."""
    if len(run.collectives) == 0:
        return []
    # the point-to-point rows alone (most jobs have none): no array of every record
    point_to_point = np.flatnonzero(np.isin(run.collectives["op"], P2P_CODES))
    if not len(point_to_point):
        return []
    c = run.collectives.where(point_to_point)
    is_send = np.isin(c["op"], _SENDS)
    is_recv = np.isin(c["op"], _RECEIVES)
    known = c["peer"] >= 0
    sender = np.where(is_send, c["rank"], c["peer"])
    receiver = np.where(is_send, c["peer"], c["rank"])
    took = np.where(c["t_end_ns"] > 0, c["t_end_ns"] - c["t_arrive_ns"], 0) / 1e9
    out = []
    pairs = sorted(
        {
            (int(a), int(b))
            for a, b in zip(
                sender[(is_send | is_recv) & known],
                receiver[(is_send | is_recv) & known],
                strict=True,
            )
        }
    )
    for a, b in pairs:
        pair = known & (sender == a) & (receiver == b)
        sends, recvs = pair & is_send, pair & is_recv
        out.append(
            PeerStats(
                sender=a,
                receiver=b,
                sends=int(sends.sum()),
                receives=int(recvs.sum()),
                bytes_total=int(c["nbytes"][sends].sum()),
                send_time_s=float(took[sends].sum()),
                receive_time_s=float(took[recvs].sum()),
            )
        )
    return out


def coverage(run: RunData) -> Coverage:
    c = run.collectives
    p2p = np.isin(c["op"], P2P_CODES) if len(c) else np.zeros(0, dtype=bool)
    sources = c["source"][~p2p] if len(c) else np.zeros(0, dtype=np.uint8)
    by_source = {name: int((sources == code).sum()) for code, name in enumerate(SOURCES)}
    return Coverage(
        by_source=by_source,
        point_to_point=int(p2p.sum()),
        incomplete=sum(info.incomplete_records for info in run.ranks.values()),
        dropped=sum(info.dropped_records for info in run.ranks.values()),
    )


def _duration_s(run: RunData) -> float:
    starts = [info.attached_ns for info in run.ranks.values() if info.attached_ns]
    ends = [info.last_record_ns for info in run.ranks.values() if info.last_record_ns]
    if not starts or not ends:
        return 0.0
    return max(0.0, (max(ends) - min(starts)) / 1e9)


def busbw_gbps(inst: Instances, group_sizes: np.ndarray) -> np.ndarray:
    """Bus bandwidth per instance in GB/s (NaN where the transfer time is unknown)."""
    factors = np.array(
        [busbw_factor(OPS[op], size) for op, size in zip(inst.op, group_sizes, strict=True)]
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        seconds = inst.transfer_ns / 1e9
        bw = np.where(seconds > 0, inst.nbytes / seconds * factors / 1e9, np.nan)
    bw[inst.nbytes == 0] = np.nan
    return bw


def group_sizes(run: RunData, group_ids: np.ndarray) -> np.ndarray:
    sizes = np.array([g.size for g in run.groups] or [1], dtype=np.int64)
    return sizes[group_ids] if len(group_ids) else np.zeros(0, dtype=np.int64)


def op_stats(run: RunData, inst: Instances, bw: np.ndarray) -> list[OpStats]:
    if inst.n_instances == 0:
        return []
    sizes = group_sizes(run, inst.group)
    rec = inst.records
    # each instance's (op, group), and per pair the time in the op and the wait of its
    # records, summed CHUNK_RECORDS records at a time (no per-record array of the run)
    pairs, pair_of = np.unique(
        inst.op.astype(np.int64) * (len(run.groups) + 1) + inst.group, return_inverse=True
    )
    pair_of = pair_of.ravel()
    time_total = np.zeros(len(pairs))
    wait_total = np.zeros(len(pairs))
    for lo in range(0, len(rec), CHUNK_RECORDS):
        part = slice(lo, lo + CHUNK_RECORDS)
        end = rec["t_end_ns"][part]
        in_op = np.where(end > 0, end - rec["t_arrive_ns"][part], 0) / 1e9
        wait = np.minimum(inst.wait_ns[part] / 1e9, in_op)
        pair = pair_of[rec["instance"][part]]
        time_total += np.bincount(pair, in_op, len(pairs))
        wait_total += np.bincount(pair, wait, len(pairs))
    n_ranks = max(len(run.ranks), 1)
    out = []
    for k in range(len(pairs)):
        sel = pair_of == k
        first = int(np.argmax(sel))
        op, group_id = int(inst.op[first]), int(inst.group[first])
        bws = bw[sel]
        bws = bws[~np.isnan(bws)]
        group = run.groups[group_id] if group_id < len(run.groups) else None
        out.append(
            OpStats(
                op=OPS[op],
                group=group.label if group is not None else f"group {group_id}",
                group_size=int(sizes[first]),
                calls=int(sel.sum()),
                bytes_total=int(inst.nbytes[sel].sum()),
                time_total_s=float(time_total[k] / n_ranks),
                wait_total_s=float(wait_total[k] / n_ranks),
                busbw_median_gbps=float(np.median(bws)) if len(bws) else None,
            )
        )
    out.sort(key=lambda s: -s.time_total_s)
    return out
