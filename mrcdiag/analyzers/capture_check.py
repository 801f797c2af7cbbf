"""Did we record every collective? Our rows against PyTorch's flight recorder, per rank.

Both sides are counted per rank, per process group and per op family (all_reduce,
all_gather, ...: the flight recorder names ops as the backend does, we name them as the
caller did). Where the recorder's ring buffer wrapped, only the sequence numbers it still
holds are compared. Point-to-point operations are compared where the recorder has them
(gloo's has none).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from mrcdiag.store import schema
from mrcdiag.store.flight_recorder import FlightDump
from mrcdiag.store.reader import RunData

# Our op -> the family both sides are counted in.
FAMILY_OF_OP: dict[str, str] = {
    "all_reduce": "all_reduce",
    "all_reduce_coalesced": "all_reduce",
    "all_gather": "all_gather",
    "all_gather_into_tensor": "all_gather",
    "all_gather_single": "all_gather",
    "all_gather_coalesced": "all_gather",
    "all_gather_into_tensor_coalesced": "all_gather",
    "reduce_scatter": "reduce_scatter",
    "reduce_scatter_tensor": "reduce_scatter",
    "reduce_scatter_single": "reduce_scatter",
    "reduce_scatter_tensor_coalesced": "reduce_scatter",
    "broadcast": "broadcast",
    "reduce": "reduce",
    "all_to_all": "all_to_all",
    "all_to_all_single": "all_to_all",
    "barrier": "barrier",
    "gather": "gather",
    "scatter": "scatter",
    "send": "send",
    "isend": "send",
    "recv": "recv",
    "irecv": "recv",
    "batch_isend_irecv": "send/recv batch",
}


def family_of_flight_op(name: str) -> str:
    """The family of a flight recorder op name ("_allgather_base", "allreduce", ...)."""
    plain = name.lower().replace("_", "")
    for key, family in (
        ("reducescatter", "reduce_scatter"),
        ("allgather", "all_gather"),
        ("allreduce", "all_reduce"),
        ("alltoall", "all_to_all"),
        ("broadcast", "broadcast"),
        ("barrier", "barrier"),
        ("gather", "gather"),
        ("scatter", "scatter"),
        ("reduce", "reduce"),
        ("send", "send"),
        ("recv", "recv"),
    ):
        if key in plain:
            return family
    return name


def _as_recorded_by(backend: str, family: str) -> str:
    """Gloo's flight recorder (torch 2.13) names its reduce-scatter `all_reduce`."""
    if backend == "gloo" and family == "reduce_scatter":
        return "all_reduce"
    return family


@dataclass(frozen=True)
class CountDifference:
    rank: int
    group: str
    family: str
    recorded: int  # by mrcdiag
    flight_recorder: int


@dataclass(frozen=True)
class CaptureCheck:
    ranks_compared: tuple[int, ...]
    collectives_compared: int  # the flight recorder's, over every rank compared
    differences: tuple[CountDifference, ...]
    notes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return bool(self.ranks_compared) and not self.differences


def check_capture(run: RunData, dumps: dict[int, FlightDump]) -> CaptureCheck:
    coll = run.collectives
    op_names = np.asarray(schema.OPS, dtype=object)
    differences: list[CountDifference] = []
    notes: list[str] = []
    compared = 0
    p2p_unchecked = 0
    missing = sorted(set(run.ranks) - set(dumps))
    if missing:
        notes.append(f"no flight recorder dump from rank(s) {_ranks(missing)}; not compared")
    for rank in sorted(dumps):
        dump = dumps[rank]
        theirs: Counter = Counter()
        first_seq: dict[str, int] = {}  # per group, the oldest entry the ring still holds
        has_p2p = any(e.is_p2p for e in dump.entries)
        before = dump.seq_at_attach
        for e in dump.entries:
            if not e.is_p2p and e.collective_seq <= before.get(e.group_name, 0):
                continue  # mrcdiag's own traffic at attach
            family = family_of_flight_op(e.op)
            theirs[(e.group_name, family)] += 1
            if not e.is_p2p:
                first_seq[e.group_name] = min(
                    first_seq.get(e.group_name, e.collective_seq), e.collective_seq
                )
        mine = coll.where(coll["rank"] == rank)
        ours: Counter = Counter()
        for op, group_id, seq in zip(mine["op"], mine["group"], mine["seq"], strict=True):
            group = run.groups[int(group_id)]
            family = FAMILY_OF_OP.get(str(op_names[int(op)]), str(op_names[int(op)]))
            is_p2p = family in ("send", "recv", "send/recv batch")
            if is_p2p and not has_p2p:
                p2p_unchecked += 1
                continue
            if not is_p2p:
                # the ring buffer loses the oldest entries: compare from its first one on
                if int(seq) + before.get(group.name, 0) < first_seq.get(group.name, 1):
                    continue
            ours[(group.name, _as_recorded_by(dump.backend, family))] += 1
        compared += sum(theirs.values())
        for key in sorted(set(ours) | set(theirs)):
            if ours[key] != theirs[key]:
                differences.append(CountDifference(rank, key[0], key[1], ours[key], theirs[key]))
    if p2p_unchecked:
        notes.append(
            f"{p2p_unchecked} point-to-point records not compared: this backend's flight "
            "recorder does not record point-to-point operations"
        )
    return CaptureCheck(tuple(sorted(dumps)), compared, tuple(differences), tuple(notes))


def _ranks(ranks: list[int]) -> str:
    return ",".join(str(r) for r in ranks)
