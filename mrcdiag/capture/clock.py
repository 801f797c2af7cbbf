"""Clock offsets between ranks, estimated once at attach.

Every record carries the rank's own CLOCK_MONOTONIC. Processes of one machine (same
kernel boot id) share that clock exactly, so their offset is 0 by construction. Across
machines one rank per machine exchanges timestamps with global rank 0 over the process
group (NTP-style ping-pong, the round with the shortest round trip wins); the error of
such an estimate is bounded by half that round trip, which is stored as
`uncertainty_ns` next to the offset. On one machine we still measure rank 1 against
rank 0 so that every run records how good the estimate would be (`measured_offset_ns`
against a true offset of 0).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from mrcdiag.store.records import ClockEstimate

ROUNDS = 8


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return socket.gethostname()


AGENT_PORT_ENV = "MRCDIAG_AGENT_PORT"  # the node agent's port, set by launch
AGENT_ADDR_ENV = "MRCDIAG_AGENT_ADDR"  # the address it listens on (0.0.0.0: every one)


def host_identity() -> tuple[str, str, str]:
    """(host, boot id, its node agent's URL): the same for every rank of one machine."""
    return socket.gethostname(), boot_id(), agent_url()


def agent_url() -> str:
    """This node's agent as other nodes reach it: on the address this node uses to reach
    the job's rendezvous (MASTER_ADDR), which every node can reach back; "" without one."""
    port = os.environ.get(AGENT_PORT_ENV)
    if not port:
        return ""
    addr = os.environ.get(AGENT_ADDR_ENV, "")
    if addr in ("", "0.0.0.0", "::"):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((os.environ.get("MASTER_ADDR") or "127.0.0.1", 9))
                addr = s.getsockname()[0]
        except OSError:
            addr = "127.0.0.1"
    return f"http://{addr}:{port}"


def estimate_offsets(dist: Any, torch: Any, rank: int, world_size: int, group: Any) -> tuple:
    """Run the exchange on all ranks; returns (this rank's ClockEstimate, each rank's host,
    the node agents' URLs by host where launch gave them).

    `group` must be a CPU-capable (gloo) group holding every rank.
    """
    identities: list[Any] = [None] * world_size
    dist.all_gather_object(identities, host_identity(), group=group)
    reference = identities[0]
    representatives: dict[tuple, int] = {}
    for r, identity in enumerate(identities):
        representatives.setdefault(tuple(identity), r)
    probes = [r for ident, r in representatives.items() if r != 0]
    if not probes and world_size > 1:
        probes = [1]  # one machine: measure anyway, to know the method's accuracy

    mine: tuple[int, int] | None = None
    buf = torch.zeros(1, dtype=torch.int64)
    if rank == 0:
        for peer in probes:
            for _ in range(ROUNDS):
                dist.recv(buf, src=peer, group=group)
                buf[0] = time.monotonic_ns()
                dist.send(buf, dst=peer, group=group)
    elif rank in probes:
        best: tuple[int, int] | None = None
        for _ in range(ROUNDS):
            t1 = time.monotonic_ns()
            buf[0] = t1
            dist.send(buf, dst=0, group=group)
            dist.recv(buf, src=0, group=group)
            t3 = time.monotonic_ns()
            rtt = t3 - t1
            offset = int(buf[0]) - (t1 + t3) // 2
            if best is None or rtt < best[1]:
                best = (offset, rtt)
        mine = best

    results: list[Any] = [None] * world_size
    dist.all_gather_object(results, mine, group=group)
    by_identity = {tuple(identities[r]): results[r] for r in probes}
    own_identity = tuple(identities[rank])
    measured = by_identity.get(own_identity) if rank != 0 else None
    if rank == 0:
        estimate = ClockEstimate(0, None, None, "reference")
    elif own_identity[1] == reference[1]:
        shared = results[rank] if rank in probes else None
        estimate = ClockEstimate(
            0,
            shared[0] if shared else None,
            shared[1] // 2 if shared else None,
            "shared_clock",
        )
    else:
        estimate = ClockEstimate(measured[0], measured[0], measured[1] // 2, "ping_pong")
    hosts = [identity[0] for identity in identities]
    agents = {identity[0]: identity[2] for identity in identities if identity[2]}
    return estimate, hosts, agents
