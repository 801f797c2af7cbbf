"""Pairwise link probe between hosts at attach: which link is slow, not only that one is.

A collective that waits on its slowest link is slow on every rank, so collective timings
alone cannot say which host's link is at fault. As cluster validators and nccl-tests do,
one rank per host exchanges a message with every other host's (a ring past 16 hosts) and
times the round trip; a host whose every link is slow is the one to look at. The probe
runs over the CPU (gloo) group, so it measures the path gloo takes: on NCCL jobs over
InfiniBand that may be a different network than the collectives' (said in the finding).
"""

from __future__ import annotations

import os
import time
from typing import Any

from mrcdiag.capture.thread_clock import ThreadClock

DEFAULT_BYTES = 1 << 20
ROUNDS = 5
ALL_PAIRS_UP_TO = 16
# a round in which its ends waited for a CPU longer than this share of it is spoiled
CLEAN_ROUND_WAIT_RATIO = 0.1


def pairs_for(hosts: list[str]) -> list[tuple[int, int]]:
    n = len(hosts)
    if n <= ALL_PAIRS_UP_TO:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    return [(i, (i + 1) % n) for i in range(n)]


def probe_links(dist: Any, torch: Any, rank: int, rank_hosts: list[str], group: Any) -> list:
    """Run on every rank; returns the measured pairs (the same list on every rank)."""
    representatives: dict[str, int] = {}
    for r, host in enumerate(rank_hosts):
        representatives.setdefault(host, r)
    hosts = list(representatives)
    if len(hosts) < 2:
        return []
    nbytes = int(os.environ.get("MRCDIAG_PROBE_BYTES", DEFAULT_BYTES))
    buf = torch.zeros(max(nbytes // 4, 1), dtype=torch.float32)
    token = torch.zeros(1, dtype=torch.float32)
    clock = ThreadClock()
    # per pair and round: the round trip (on a), and each end's wait for a CPU in it
    trips: dict[tuple[int, int], list[float]] = {}
    waits: dict[tuple[int, int], list[float]] = {}
    # Rounds go over every pair in turn rather than one pair at a time, so that a burst of
    # load on a host (another process, the job's own start-up) spoils one round of several
    # pairs, not every round of one pair; the fastest round of each pair is kept.
    for _ in range(ROUNDS):
        for i, j in pairs_for(hosts):
            a, b = representatives[hosts[i]], representatives[hosts[j]]
            if rank not in (a, b):
                continue
            # An untimed one-element round trip first: b may still be busy with another
            # pair, and waiting for it is not the link's time.
            if rank == a:
                dist.send(token, dst=b, group=group)
                dist.recv(token, src=b, group=group)
                waited = _run_queue_wait_ns(clock)
                t0 = time.perf_counter()
                dist.send(buf, dst=b, group=group)
                dist.recv(buf, src=b, group=group)
                trips.setdefault((i, j), []).append(time.perf_counter() - t0)
            else:
                dist.recv(token, src=a, group=group)
                dist.send(token, dst=a, group=group)
                waited = _run_queue_wait_ns(clock)
                dist.recv(buf, src=a, group=group)
                dist.send(buf, dst=a, group=group)
            waits.setdefault((i, j), []).append((_run_queue_wait_ns(clock) - waited) / 1e9)
    gathered: list[Any] = [None] * len(rank_hosts)
    dist.all_gather_object(gathered, {"trips": trips, "waits": waits}, group=group)
    pairs = []
    for (i, j), rtts in sorted(t for part in gathered for t in part["trips"].items()):
        a_waits = gathered[representatives[hosts[i]]]["waits"].get((i, j), [])
        b_waits = gathered[representatives[hosts[j]]]["waits"].get((i, j), [])
        rtt, waited = _fastest_clean_round(rtts, a_waits, b_waits)
        pairs.append(
            {
                "a": hosts[i],
                "b": hosts[j],
                "ranks": [representatives[hosts[i]], representatives[hosts[j]]],
                "bytes": buf.numel() * 4,
                "rtt_s": rtt,
                "cpu_wait_s": waited,
                "gbps": 2 * buf.numel() * 4 / rtt / 1e9,
            }
        )
    return pairs


def _run_queue_wait_ns(clock: ThreadClock) -> int:
    return max(clock.read()[1], 0)  # UNKNOWN (no schedstat) reads as no wait


def _fastest_clean_round(
    rtts: list[float], a_waits: list[float], b_waits: list[float]
) -> tuple[float, float]:
    """The fastest round in which neither end waited for a CPU for more than a tenth of
    it (on a host whose CPUs another process keeps busy, the probe waits for a CPU, not
    for the link), or the fastest of all with what its ends waited, where none was
    clean, for the analysis to judge the link less that wait."""

    def waited(k: int) -> float:
        return (a_waits[k] if k < len(a_waits) else 0.0) + (b_waits[k] if k < len(b_waits) else 0.0)

    rounds = [(rtt, waited(k)) for k, rtt in enumerate(rtts)]
    clean = [r for r in rounds if r[1] <= CLEAN_ROUND_WAIT_RATIO * r[0]]
    return min(clean or rounds)
