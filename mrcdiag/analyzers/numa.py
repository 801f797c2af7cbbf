"""Ranks that run on the CPUs of another NUMA node than their GPU's.

A GPU hangs off one socket's PCIe root; its host-device copies, its pinned-memory staging
and the launch of its kernels go fastest from that socket's CPUs and memory. A rank
pinned to the other socket (a taskset or cgroup written for another layout, a launcher
that binds local rank i to socket i % 2 on a box whose GPUs are wired the other way)
crosses the SMP interconnect for all of it. Found from the rank's own `device` event
(its GPU's PCI bus id and the CPUs it may run on) against the node's topology (the CPUs
NVML names near that GPU). An unpinned rank, allowed on every CPU, is no mismatch.
"""

from __future__ import annotations

from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.gpus import topology_gpu
from mrcdiag.store.reader import RunData, rank_ranges


def find_numa_mismatch(run: RunData, stragglers: list[Finding]) -> list[Finding]:
    out = []
    for rank, info in sorted(run.ranks.items()):
        topology = run.topology.get(info.host) or {}
        gpu = topology_gpu(run, rank, topology)
        mine = set((info.device or {}).get("cpus") or [])
        near = set((gpu or {}).get("cpus") or [])
        if gpu is None or not mine or not near:
            continue
        everywhere = set().union(*(set(g.get("cpus") or []) for g in topology["gpus"]))
        if everywhere <= mine or mine & near:
            continue  # unpinned, or at least partly on its GPU's socket
        lost = sum(f.time_lost_s for f in stragglers if f.kind == "straggler" and rank in f.ranks)
        out.append(
            Finding(
                kind="interconnect",
                severity="warning",
                cause="numa_mismatch",
                time_lost_s=lost,
                ranks=(rank,),
                nodes=(info.host,),
                summary=f"rank {rank} on {info.host} runs on CPUs {rank_ranges(sorted(mine))}, "
                f"but its GPU {gpu['index']} is near CPUs {rank_ranges(sorted(near))} (NUMA node "
                f"{gpu.get('numa_node', '?')}): its host-device traffic crosses sockets",
                evidence={
                    "gpu": gpu["index"],
                    "gpu_numa_node": gpu.get("numa_node"),
                    "rank_cpus": rank_ranges(sorted(mine)),
                    "gpu_cpus": rank_ranges(sorted(near)),
                },
                recommendation="bind each rank to the CPUs of its GPU's NUMA node (numactl "
                "--cpunodebind, or the launcher's or scheduler's affinity map; mrcdiag topo "
                "shows which CPUs are near which GPU)",
            )
        )
    return out
