"""Which GPU each rank drives, from the node agent's process map."""

from __future__ import annotations

from mrcdiag.metrics import GPU_RANK_INFO
from mrcdiag.store.reader import RunData
from mrcdiag.store.samples import parse_labels


def gpu_of(run: RunData, rank: int) -> str:
    """The GPU index (as the agent labels it) of this rank: from the agent's process map
    (mrcdiag_gpu_rank_info); without it, GPU index = local rank, the usual
    one-process-per-GPU layout."""
    info = run.ranks.get(rank)
    gpu = str(info.local_rank) if info else "?"
    samples = run.node_samples.get(run.host_of(rank))
    if samples is None:
        return gpu
    for labels in samples["labels"][samples["name"] == GPU_RANK_INFO]:
        fields = parse_labels(labels)
        if fields.get("rank") == str(rank):
            gpu = fields.get("gpu", gpu)
    return gpu


def ranks_on_gpu(run: RunData, host: str, gpu: str) -> list[int]:
    return sorted(r for r, i in run.ranks.items() if i.host == host and gpu_of(run, r) == gpu)


def topology_gpu(run: RunData, rank: int, topology: dict) -> dict | None:
    """The entry of the node's topology.json for the GPU this rank reported using (its
    device event's PCI bus id); None where it reported none."""
    bus = str((run.ranks[rank].device or {}).get("pci_bus_id") or "").lower()
    if not bus:
        return None
    return next(
        (g for g in topology.get("gpus", []) if str(g.get("bus_id", "")).lower() == bus), None
    )
