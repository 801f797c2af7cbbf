"""Collectives among GPUs that cannot reach each other directly.

Where NVML says peer-to-peer does not work between two GPUs of a node (consumer cards
whose driver turns it off, a chipset or ACS setting, GPUs on different sockets), NCCL
stages their traffic through host memory: each byte crosses PCIe twice, so a group on
those GPUs gets at most half of what a direct PCIe path would give, and far less than
NVLink. This is the box's shape, not a fault of one rank: an efficiency statement, with
the topology as evidence and what the path means. Its time is an estimate: half the
transfer time of those collectives.
"""

from __future__ import annotations

import numpy as np

from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.gpus import gpu_of, topology_gpu
from mrcdiag.analyzers.instances import Instances
from mrcdiag.analyzers.pcie import LANE_GBPS
from mrcdiag.store.reader import RunData


def find_no_p2p(run: RunData, inst: Instances, busbw_gbps: np.ndarray) -> list[Finding]:
    out = []
    for g, group in enumerate(run.groups):
        members = [r for r in group.ranks if r in run.ranks]
        hosts = {run.ranks[r].host for r in members}
        if len(members) < 2 or len(hosts) != 1:
            continue
        host = hosts.pop()
        topology = run.topology.get(host)
        if not topology:
            continue
        gpus = sorted({_gpu_index(run, r, topology) for r in members} - {None})
        blocked = [
            p
            for p in topology.get("pairs", [])
            if set(p["gpus"]) <= set(gpus) and p.get("p2p") not in ("ok", None)
        ]
        sel = inst.group == g
        if not blocked or not sel.any():
            continue
        transfer_s = float(np.nansum(inst.transfer_ns[sel])) / 1e9
        speeds = busbw_gbps[sel]
        achieved = float(np.nanmedian(speeds)) if np.isfinite(speeds).any() else None
        direct = _direct_pcie_gbps(topology, gpus)
        pairs = ", ".join(f"GPU{a}-GPU{b}: {p['p2p']}" for p in blocked for a, b in [p["gpus"]])
        out.append(
            Finding(
                kind="interconnect",
                severity="info",
                cause="no_p2p",
                time_lost_s=transfer_s / 2,
                ranks=tuple(members),
                nodes=(host,),
                summary=f"{group.label}'s collectives on {host} run between GPUs without "
                f"peer-to-peer ({pairs}): NCCL stages them through host memory, each byte "
                "crossing PCIe twice"
                + (f"; {achieved:.1f} GB/s bus bandwidth achieved" if achieved else ""),
                evidence={
                    "pairs_without_p2p": pairs,
                    "path": ", ".join(sorted({p["path"] for p in blocked})),
                    "busbw_gbps": round(achieved, 3) if achieved else None,
                    "direct_pcie_gbps": round(direct, 1) if direct else None,
                    "staged_at_most_gbps": round(direct / 2, 1) if direct else None,
                    "transfer_s": round(transfer_s, 3),
                },
                recommendation="where the hardware allows it, turn P2P on (ACS off in the BIOS, "
                "IOMMU passthrough; consumer GPUs' drivers do not offer it); keep the heaviest "
                "traffic off this group (tensor parallel within GPUs that share a switch), or "
                "overlap it with compute",
            )
        )
    return out


def _gpu_index(run: RunData, rank: int, topology: dict) -> int | None:
    """The topology's index of the rank's GPU: by the PCI bus id the rank reported, else
    the agent's process map or its local rank."""
    gpu = topology_gpu(run, rank, topology)
    if gpu is not None:
        return int(gpu["index"])
    try:
        return int(gpu_of(run, rank))
    except ValueError:
        return None


def _direct_pcie_gbps(topology: dict, gpus: list[int]) -> float | None:
    links = [
        LANE_GBPS.get(int(g["pcie_gen"]), 0.0) * int(g["pcie_width"])
        for g in topology.get("gpus", [])
        if g["index"] in gpus and g.get("pcie_gen") and g.get("pcie_width")
    ]
    return min(links) if links else None
