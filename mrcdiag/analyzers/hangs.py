"""Hangs and lost ranks: who stopped, and where everyone else is stuck.

Like a flight-recorder analysis: each rank's last collective sequence number per group
and its last "in_collective" event (written by its writer thread while it is blocked)
say which rank never arrived at the collective the others wait in.
"""

from __future__ import annotations

import numpy as np

from mrcdiag.analyzers.findings import Finding
from mrcdiag.store.reader import RunData
from mrcdiag.store.schema import OP_CODE, OPS, POINT_TO_POINT_OPS

_P2P = [OP_CODE[n] for n in POINT_TO_POINT_OPS]


def find_hangs(run: RunData) -> list[Finding]:
    if not run.ranks:
        return []
    coll = run.collectives
    collective = ~np.isin(coll["op"], _P2P)
    ended_badly = [r for r, info in run.ranks.items() if not info.closed_cleanly]
    missing = sorted(set(range(run.world_size)) - set(run.ranks))
    if not ended_badly and not missing:
        return []
    # The furthest any rank got in each group, and where each rank stopped.
    findings = []
    last_seq: dict[tuple[int, int], int] = {}
    for rank in run.ranks:
        mine = collective & (coll["rank"] == rank)
        for g in np.unique(coll["group"][mine]):
            last_seq[(rank, int(g))] = int(coll["seq"][mine & (coll["group"] == g)].max())
    stuck = {r: run.ranks[r].stuck_in for r in run.ranks if run.ranks[r].stuck_in}
    lagging: dict[int, dict] = {}
    for g, info in enumerate(run.groups):
        reached = {r: last_seq.get((r, g), 0) for r in info.ranks if r in run.ranks}
        stuck_seqs = [int(s["seq"]) for r, s in stuck.items() if s.get("group_name") == info.name]
        furthest = max(list(reached.values()) + stuck_seqs, default=0)
        for r in info.ranks:
            if r in missing:
                continue
            got = reached.get(r, 0)
            if r in ended_badly and got < furthest and r not in stuck:
                lagging.setdefault(r, {"group": info.name, "last_seq": got, "others_at": furthest})
    # Ranks that the launcher terminated flushed on SIGTERM; a rank with neither a clean
    # close nor that flush died on its own (kill -9, OOM, segfault): it is the lost one.
    if any(run.ranks[r].terminated for r in ended_badly):
        vanished = [r for r in ended_badly if not run.ranks[r].terminated]
        lagging = {r: v for r, v in lagging.items() if r in vanished}
        for r in vanished:
            lagging.setdefault(
                r,
                {
                    "group": "-",
                    "last_seq": max(
                        (s for (rank, _), s in last_seq.items() if rank == r), default=0
                    ),
                    "others_at": max(last_seq.values(), default=0),
                },
            )
    lost = sorted(set(lagging) | set(missing))
    if not lost:
        # Everyone stopped together (the whole job was killed): say so, mildly.
        if ended_badly and len(ended_badly) == len(run.ranks):
            findings.append(
                Finding(
                    kind="hang",
                    severity="info",
                    cause="job_killed",
                    time_lost_s=0.0,
                    ranks=tuple(ended_badly),
                    nodes=tuple(sorted({run.host_of(r) for r in ended_badly})),
                    summary="every rank stopped without closing its records: the job was killed "
                    "or crashed as a whole",
                    recommendation="check the scheduler's and torchrun's logs for why the job ended",
                )
            )
        return findings
    waiting = {r: s for r, s in stuck.items() if r not in lost}
    end_of_lost = max((run.ranks[r].last_record_ns for r in lagging), default=0)
    last_seen = max((info.last_record_ns for info in run.ranks.values()), default=0)
    waiting_desc = {
        str(r): {
            "op": s.get("op"),
            "group": s.get("group_name"),
            "seq": s.get("seq"),
            "bytes": s.get("nbytes"),
        }
        for r, s in sorted(waiting.items())
    }
    where = ""
    if waiting:
        first = next(iter(sorted(waiting.items())))[1]
        where = (
            f"; the other ranks wait in {first.get('op')} #{first.get('seq')} of group "
            f"{first.get('group_name')} ({first.get('nbytes')} bytes)"
        )
    lost_desc = {
        str(r): (
            {
                "last_seq": lagging[r]["last_seq"],
                "group": lagging[r]["group"],
                "others_reached": lagging[r]["others_at"],
            }
            if r in lagging
            else {"recorded": False}
        )
        for r in lost
    }
    findings.append(
        Finding(
            kind="hang",
            severity="critical",
            cause="missing_rank",
            time_lost_s=max(0.0, (last_seen - end_of_lost) / 1e9) if end_of_lost else 0.0,
            ranks=tuple(lost),
            nodes=tuple(sorted({run.host_of(r) for r in lost if r in run.ranks})),
            summary=f"rank {', '.join(map(str, lost))} stopped early{where}",
            evidence={
                "stopped": lost_desc,
                "waiting": waiting_desc,
                "last_op_of_stopped": _last_op(run, lost),
            },
            recommendation="look at the stopped rank's own log and its node (OOM killer, "
            "segfault, preemption, lost host); the others hang until the collective times out",
        )
    )
    return findings


def _last_op(run: RunData, ranks: list[int]) -> dict[str, str]:
    coll = run.collectives
    out = {}
    for r in ranks:
        mine = np.flatnonzero(coll["rank"] == r)
        if len(mine):
            i = mine[np.argmax(coll["t_arrive_ns"][mine])]
            out[str(r)] = f"{OPS[int(coll['op'][i])]} #{int(coll['seq'][i])}"
    return out
