"""Hangs and lost ranks: who stopped, and where everyone else is stuck.

Like a flight-recorder analysis: each rank's last collective sequence number per group
and its last "in_collective" event (written by its writer thread while it is blocked)
say which rank never arrived at the collective the others wait in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.stacks import stack_groups, where_each_rank_is
from mrcdiag.store.reader import RunData
from mrcdiag.store.schema import OP_CODE, OPS, POINT_TO_POINT_OPS
from mrcdiag.store.step_grid import StepSpans

_P2P = [OP_CODE[n] for n in POINT_TO_POINT_OPS]


def find_hangs(run: RunData, spans: StepSpans) -> list[Finding]:
    """`spans`: the run's step spans (analyze lets the step rows go once they are
    made)."""
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
        # A rank stopped with the others is still the lost one when they were waiting in
        # a collective it never reached (it was stuck in its own code)
        waited_at = {(s.get("group_name"), int(s.get("seq", -1))) for s in stuck.values()}
        behind = [r for r, v in lagging.items() if (v["group"], v["others_at"]) in waited_at]
        lagging = {r: v for r, v in lagging.items() if r in vanished or r in behind}
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
    lost = _root_causes(run, sorted(set(lagging) | set(missing)))
    if not lost:
        # Everyone stopped together (the whole job was killed): say so, mildly.
        if ended_badly and len(ended_badly) == len(run.ranks):
            findings.append(_whole_job_ended(run, ended_badly))
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
        label = {g.name: g.label for g in run.groups}.get(str(first.get("group_name")))
        where = (
            f"; the other ranks wait in {first.get('op')} #{first.get('seq')} of group "
            f"{label or first.get('group_name')} ({first.get('nbytes')} bytes)"
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
            cause="rank_failed"
            if any(run.ranks.get(r) and run.ranks[r].failure for r in lost)
            else "missing_rank",
            time_lost_s=max(0.0, (last_seen - end_of_lost) / 1e9) if end_of_lost else 0.0,
            ranks=tuple(lost),
            nodes=tuple(sorted({run.host_of(r) for r in lost if r in run.ranks})),
            summary=_how_they_ended(run, lost, spans) + where,
            evidence={
                "stopped": lost_desc,
                "waiting": waiting_desc,
                "last_op_of_stopped": _last_op(run, lost),
                **_stacks_evidence(run, lost),
            },
            recommendation="look at the stopped rank's own log and its node (OOM killer, "
            "segfault, preemption, lost host); the others hang until the collective times out",
        )
    )
    return findings


def _root_causes(run: RunData, lost: list[int]) -> list[int]:
    """The ranks that ended first. When one rank dies, its peers' collectives fail with
    it ("connection closed by peer"), so their exceptions are consequences: a rank that
    left no trace (a signal it could not catch) is the cause before any that raised, and
    of those that raised, the first (within a second) are."""
    failed = {r: run.ranks[r].failure for r in lost if r in run.ranks and run.ranks[r].failure}
    if not failed:
        return lost
    silent = [r for r in lost if r in run.ranks and r not in failed and not run.ranks[r].terminated]
    if silent:
        return [r for r in lost if r not in failed]
    first_ns = min(int(f.get("t_ns", 0)) for f in failed.values())
    return [r for r in lost if r not in failed or int(failed[r].get("t_ns", 0)) <= first_ns + 10**9]


def _how_they_ended(run: RunData, lost: list[int], spans: StepSpans) -> str:
    """One clause per lost rank: the exception it died of, or that it left no trace (a
    signal no process can catch: SIGKILL, most often the kernel's OOM killer, or a crash
    in native code), with the step it was in."""
    parts = []
    last_ops = _last_op(run, lost)
    for r in lost:
        info = run.ranks.get(r)
        if info is None:
            parts.append(f"rank {r} never recorded")
            continue
        last = spans.last_step_of(r)  # -1: it recorded no step
        # after its last recorded step, and the last collective it reached
        after = f"after step {last}" + (
            f" (its last collective {last_ops[str(r)]})" if str(r) in last_ops else ""
        )
        if info.failure:
            f = info.failure
            inside = f.get("in_collective") or {}
            where = f" in {inside.get('op')} #{inside.get('seq')}" if inside else ""
            parts.append(
                f"rank {r} failed at step {f.get('step', last + 1)}{where}: {f.get('error', '?')}"
            )
        elif info.fatal:
            where = f", {info.fatal['where']}" if info.fatal.get("where") else ""
            parts.append(
                f"rank {r} died of {info.fatal['signal']} ({info.fatal['words']}) {after}"
                f"{where}: a crash in native code (a C++ exception that ended in "
                "terminate, a segmentation fault), not the out-of-memory killer"
            )
        elif not info.terminated and not info.closed_cleanly:
            # its last half-second of records went with it: the step is a lower bound
            seen = info.exit or {}
            if seen.get("signal") == "SIGKILL":
                parts.append(
                    f"rank {r} was killed by SIGKILL {after}: torchrun saw exit "
                    f"code {seen.get('exitcode')}; most often the out-of-memory killer: "
                    "look for 'Killed process' in the node's kernel log"
                )
            elif seen:
                what = seen.get("signal") or f"exit code {seen.get('exitcode')}"
                parts.append(
                    f"rank {r} ended with {what} {after}, as torchrun saw it, "
                    "leaving no trace of its own"
                )
            else:
                parts.append(
                    f"rank {r} ended without a trace {after}: killed by a signal it could "
                    "not catch (SIGKILL, the out-of-memory killer, or a crash)"
                )
        else:
            parts.append(f"rank {r} stopped early {after}")
    return "; ".join(parts)


def _stacks_evidence(run: RunData, ranks: list[int]) -> dict[str, Any]:
    """Where the lost ranks stood and every rank's group by stack, where the ranks wrote
    their stacks (launch --on-hang dump, or when launch stopped the job)."""
    where = where_each_rank_is(run, ranks)
    if not where:
        return {}
    return {"stuck_at": where, "stack_groups": stack_groups(run)}


def _last_op(run: RunData, ranks: list[int]) -> dict[str, str]:
    coll = run.collectives
    out = {}
    for r in ranks:
        mine = np.flatnonzero(coll["rank"] == r)
        if len(mine):
            i = mine[np.argmax(coll["t_arrive_ns"][mine])]
            out[str(r)] = f"{OPS[int(coll['op'][i])]} #{int(coll['seq'][i])}"
    return out


def find_live_hangs(run: RunData, now_ns: int, hang_after_s: float) -> list[Finding]:
    """A hang while the job still runs: ranks have waited in a collective for more than
    `hang_after_s` while members of its group never arrived at it, or no rank has made a
    step or a collective for that long. `now_ns` is on the run's aligned clock."""
    if not run.ranks:
        return []
    hang_after_ns = int(hang_after_s * 1e9)
    coll = run.collectives
    group_of = {g.name: i for i, g in enumerate(run.groups)}
    inside: dict[int, dict] = {}  # rank -> the collective it is still blocked in
    for rank, info in run.ranks.items():
        s = info.stuck_in
        if not s or info.closed_cleanly or info.terminated:
            continue
        g = group_of.get(str(s.get("group_name")))
        seq = int(s.get("seq", -1))
        if g is None:
            continue
        done = (coll["rank"] == rank) & (coll["group"] == g) & (coll["seq"] == seq)
        # Still in it: neither its record nor any later one (a collective the rank once
        # waited in and left, whose record has gone out of the window, is not a hang)
        if not done.any() and info.last_record_ns <= int(s.get("t_arrive_ns", 0)):
            inside[rank] = {**s, "group_id": g}
    waiting = {
        r: w
        for r, w in inside.items()
        if now_ns - int(w.get("t_arrive_ns", now_ns)) >= hang_after_ns
    }
    if waiting:
        return [_waiting_for_missing(run, waiting, now_ns)]
    if inside:
        # Ranks wait in a collective, not yet for `hang_after_s`: the job is not stuck
        # outside collectives, whatever the time since the last record (which precedes
        # their arrival by the compute before it)
        return []
    last = max((info.last_record_ns for info in run.ranks.values()), default=0)
    if last and now_ns - last >= hang_after_ns:
        ranks = sorted(r for r, i in run.ranks.items() if not i.closed_cleanly)
        if not ranks:
            return []
        return [
            Finding(
                kind="hang",
                severity="critical",
                cause="no_progress",
                time_lost_s=(now_ns - last) / 1e9,
                ranks=tuple(ranks),
                nodes=tuple(sorted({run.host_of(r) for r in ranks})),
                summary=f"no rank has ended a step or a collective for "
                f"{(now_ns - last) / 1e9:.0f} s, and none is waiting in one",
                evidence={"last_op": _last_op(run, ranks)},
                recommendation="the job is stuck outside collectives (data loading, I/O, a "
                "lock, a checkpoint); look at the ranks' stacks (py-spy dump --pid)",
            )
        ]
    return []


def _waiting_for_missing(run: RunData, waiting: dict[int, dict], now_ns: int) -> Finding:
    """The collective the most ranks wait in, and the members that never arrived."""
    keys = [(w["group_id"], int(w["seq"])) for w in waiting.values()]
    group, seq = max(set(keys), key=keys.count)
    info = run.groups[group]
    coll = run.collectives
    reached = {}
    for r in info.ranks:
        mine = (coll["rank"] == r) & (coll["group"] == group)
        reached[r] = int(coll["seq"][mine].max()) if mine.any() else -1
    in_it = {r for r, w in waiting.items() if (w["group_id"], int(w["seq"])) == (group, seq)}
    missing = sorted(r for r in info.ranks if r not in in_it and reached.get(r, -1) < seq)
    first = next(w for r, w in sorted(waiting.items()) if r in in_it)
    waited_s = (now_ns - min(int(waiting[r]["t_arrive_ns"]) for r in in_it)) / 1e9
    where = f"{first.get('op')} #{seq} of group {info.label}"
    if missing:
        summary = (
            f"rank {', '.join(map(str, missing))} never arrived at {where}; "
            f"{len(in_it)} rank(s) have waited there for {waited_s:.0f} s"
        )
    else:
        summary = f"{len(in_it)} rank(s) have waited in {where} for {waited_s:.0f} s"
    blamed = missing or sorted(in_it)
    return Finding(
        kind="hang",
        severity="critical",
        cause="missing_rank" if missing else "stuck_collective",
        time_lost_s=waited_s * len(in_it) / max(1, len(info.ranks)),
        ranks=tuple(blamed),
        nodes=tuple(sorted({run.host_of(r) for r in blamed if r in run.ranks})),
        summary=summary,
        evidence={
            "collective": {"group": info.label, "seq": seq, "op": first.get("op")},
            "waiting_ranks": sorted(in_it),
            "waited_s": round(waited_s, 1),
            "missing": {
                str(r): {"last_seq": reached.get(r, -1), "recorded": r in run.ranks}
                for r in missing
            },
            "last_op_of_missing": _last_op(run, missing),
        },
        recommendation="the missing rank is stuck in its own code or lost: look at its "
        "stack (py-spy dump --pid) and its node; the others hang until the collective "
        "times out",
    )


def _whole_job_ended(run: RunData, ranks: list[int]) -> Finding:
    """Every rank stopped together: killed as a whole, or each of an error (a collective
    timeout on every rank: the cause is in what they disagreed about, not in one rank)."""
    failed = {r: run.ranks[r].failure for r in ranks if run.ranks[r].failure}
    if len(failed) == len(ranks):
        # a peer that exited takes its connections with it: "closed by peer" is what the
        # others then raise, so the first error that is not one of those is the cause
        own = [r for r in failed if not _peer_gone(str(failed[r].get("error", "")))]
        first = min(own or failed, key=lambda r: int(failed[r].get("t_ns", 0) or 0))
        error = str(failed[first].get("error", "?"))
        summary = (
            f"every rank ended with an error; the first, rank {first} at step "
            f"{failed[first].get('step', '?')}: {error}"
        )
        cause, advice = (
            "job_failed",
            (
                "read the first error; a collective timeout on every rank means they stopped "
                "issuing the same collectives (the flight recorder, --flight-recorder, names "
                "where) or one of them stalled"
            ),
        )
    else:
        summary = (
            "every rank stopped without closing its records: the job was killed or crashed "
            "as a whole"
        )
        cause, advice = (
            "job_killed",
            "check the scheduler's and torchrun's logs for why the job ended",
        )
    return Finding(
        kind="hang",
        severity="info",
        cause=cause,
        time_lost_s=0.0,
        ranks=tuple(ranks),
        nodes=tuple(sorted({run.host_of(r) for r in ranks})),
        summary=summary,
        evidence={"errors": {str(r): str(f.get("error", "?"))[:300] for r, f in failed.items()}}
        if failed
        else {},
        recommendation=advice,
    )


# What a rank raises when a peer's process ended and its connections with it
_PEER_GONE = ("closed by peer", "reset by peer", "remote worker crash", "broken pipe")


def _peer_gone(error: str) -> bool:
    return any(words in error.lower() for words in _PEER_GONE)
