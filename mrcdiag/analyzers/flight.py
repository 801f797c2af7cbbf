"""Where the ranks' own flight recorders disagree (PyTorch's record of what each rank
issued to c10d): the first collective of each process group that its ranks did not
issue alike, and, where several groups diverged, the one that diverged first.

A rank that skips a collective (a branch on its rank or its data, an early exit) or
calls them in another order issues, at the same sequence number of the group, something
else than its peers: another op, other sizes or dtypes. A rank stuck before a
collective never issues it. Either way every rank after that point waits; the chained
groups (a pipeline stage waiting in its data-parallel group because its tensor-parallel
group diverged) diverge later, and the earliest divergence is the cause.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from mrcdiag.analyzers.findings import Finding
from mrcdiag.store.flight_recorder import FlightDump, FlightEntry


@dataclass(frozen=True)
class Divergence:
    group: str
    group_desc: str
    seq: int
    odd_ranks: tuple[int, ...]  # the ranks that did otherwise, or never issued it
    issued: dict[int, str]  # rank -> what it issued there ("" where it issued nothing)
    last_seq: dict[int, int]  # rank -> the last sequence number it issued in the group
    # rank -> the last one it saw complete (NCCL marks entries completed; gloo does not)
    last_completed: dict[int, int]
    created_ns: int  # when the first of its members issued it (0: not known)


def _what(e: FlightEntry) -> str:
    sizes = f" {e.input_sizes}" if e.input_sizes else ""
    dtypes = f" {e.input_dtypes}" if e.input_dtypes else ""
    return f"{e.op}{sizes}{dtypes}"


def group_divergence(group: str, per_rank: dict[int, dict[int, FlightEntry]]) -> Divergence | None:
    """The first sequence number of one group at which its ranks' entries differ, among
    the numbers every rank's buffer still holds (a ring buffer drops the oldest)."""
    ranks = sorted(per_rank)
    if len(ranks) < 2:
        return None
    lo = max(min(seqs) for seqs in per_rank.values())
    hi = max(max(seqs) for seqs in per_rank.values())
    last = {r: max(per_rank[r]) for r in ranks}
    completed = {
        r: max((q for q, e in per_rank[r].items() if e.state == "completed"), default=0)
        for r in ranks
    }
    for seq in range(lo, hi + 1):
        issued = {r: _what(per_rank[r][seq]) if seq in per_rank[r] else "" for r in ranks}
        kinds = Counter(issued.values())
        if len(kinds) == 1:
            continue
        common, _ = max(kinds.items(), key=lambda kv: (kv[1], kv[0] != ""))
        odd = tuple(r for r in ranks if issued[r] != common)
        created = [per_rank[r][seq].time_created_ns for r in ranks if seq in per_rank[r]]
        desc = next(e.group_desc for r in ranks for e in per_rank[r].values())
        return Divergence(group, desc, seq, odd, issued, last, completed, min(created, default=0))
    return None


def find_flight_divergence(
    dumps: dict[int, FlightDump], host_of: Callable[[int], str] | None = None
) -> list[Finding]:
    """One critical `hang` finding (cause collective_mismatch) for the group that
    diverged first, naming the odd ranks and the sequence number; the other groups
    that diverged after it are in its evidence."""
    by_group: dict[str, dict[int, dict[int, FlightEntry]]] = {}
    for rank, dump in dumps.items():
        for e in dump.entries:
            if e.is_p2p or e.collective_seq <= dump.seq_at_attach.get(e.group_name, 0):
                continue  # point-to-point has its own numbering; mrcdiag's own traffic
            by_group.setdefault(e.group_name, {}).setdefault(rank, {})[e.collective_seq] = e
    found = [d for g, per in sorted(by_group.items()) if (d := group_divergence(g, per))]
    if not found:
        return []
    found.sort(key=lambda d: (d.created_ns == 0, d.created_ns, d.group))
    first = found[0]
    label = f"group {first.group}" + (f" ({first.group_desc})" if first.group_desc else "")
    return [
        Finding(
            kind="hang",
            severity="critical",
            cause="collective_mismatch",
            time_lost_s=0.0,
            ranks=first.odd_ranks,
            nodes=tuple(sorted({host_of(r) for r in first.odd_ranks})) if host_of else (),
            summary=f"the flight recorder shows the ranks of {label} issuing collective "
            f"#{first.seq} differently: {_describe(first)}; every rank waits from there",
            evidence={
                "group": first.group,
                "group_desc": first.group_desc,
                "seq": first.seq,
                "issued_by_rank": {str(r): w or "(nothing)" for r, w in first.issued.items()},
                "last_seq_by_rank": {str(r): s for r, s in first.last_seq.items()},
                **(
                    {"last_completed_by_rank": {str(r): s for r, s in first.last_completed.items()}}
                    if any(first.last_completed.values())
                    else {}
                ),
                "diverged_after": [f"group {d.group} at #{d.seq}" for d in found[1:]],
                "source": "PyTorch flight recorder dumps",
            },
            recommendation="look for a collective that only some ranks run (a branch on "
            "the rank or on data, an early return, a different number of micro-batches) "
            "or that they run in another order; the odd ranks' stacks show where they went",
        )
    ]


def _describe(d: Divergence) -> str:
    by_what: dict[str, list[int]] = {}
    for rank, what in d.issued.items():
        by_what.setdefault(what, []).append(rank)
    parts = []
    for what, ranks in sorted(by_what.items(), key=lambda kv: len(kv[1])):
        who = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {_span(ranks)}"
        if what:
            parts.append(f"{who} issued {what}")
        else:
            last = max(d.last_seq[r] for r in ranks)
            parts.append(f"{who} never issued it (last issued #{last})")
    return "; ".join(parts)


def _span(ranks: list[int]) -> str:
    if len(ranks) > 2 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ", ".join(map(str, ranks))
