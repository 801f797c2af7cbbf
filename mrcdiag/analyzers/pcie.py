"""GPUs whose PCIe link trained down: a lower generation or fewer lanes than the link can
run, while the GPU is busy.

An idle link drops its generation to save power and climbs back under load, so only the
samples taken while the GPU was busy count. A link below its own maximum there (a card
not seated, a riser, a slot wired x8, a BIOS setting) moves host-device data at a
fraction of its bandwidth: DataLoader copies, offloaded optimizer states, and every
collective whose GPUs talk through host memory. The time it cost is what the ranks on
that GPU were found to cost as stragglers, where they were.
"""

from __future__ import annotations

import numpy as np

from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.gpus import ranks_on_gpu
from mrcdiag.analyzers.settings import Settings
from mrcdiag.metrics import (
    GPU_PCIE_LINK_GENERATION,
    GPU_PCIE_LINK_GENERATION_MAX,
    GPU_PCIE_LINK_WIDTH,
    GPU_PCIE_LINK_WIDTH_MAX,
    GPU_UTILIZATION,
)
from mrcdiag.store.reader import Columns, RunData
from mrcdiag.store.samples import parse_labels

# Usable bandwidth per lane and direction, GB/s, by PCIe generation (after line coding)
LANE_GBPS = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}


def find_pcie_degraded(
    run: RunData, stragglers: list[Finding], settings: Settings
) -> list[Finding]:
    out = []
    for host, samples in sorted(run.node_samples.items()):
        for gpu, link in _busy_links(samples, settings).items():
            gen, gen_max, width, width_max = link
            if gen >= gen_max and width >= width_max:
                continue
            ranks = ranks_on_gpu(run, host, gpu)
            lost = sum(
                f.time_lost_s
                for f in stragglers
                if f.kind == "straggler" and set(f.ranks) & set(ranks)
            )
            share = _bandwidth(gen, width) / _bandwidth(gen_max, width_max)
            out.append(
                Finding(
                    kind="interconnect",
                    severity="warning",
                    cause="pcie_degraded",
                    time_lost_s=lost,
                    ranks=tuple(ranks),
                    nodes=(host,),
                    summary=f"GPU {gpu} on {host} runs its PCIe link at Gen{gen} x{width} "
                    f"while busy, below the Gen{gen_max} x{width_max} it can run: host-device "
                    f"copies get {100 * share:.0f}% of the link's bandwidth",
                    evidence={
                        "gpu": gpu,
                        "pcie_now": f"Gen{gen} x{width}",
                        "pcie_max": f"Gen{gen_max} x{width_max}",
                        "bandwidth_share": round(share, 3),
                    },
                    recommendation="reseat the card and check its riser and slot (nvidia-smi -q "
                    "-d PCIE shows the link; the BIOS may pin the slot's generation); until then "
                    "expect slower host-device copies on this GPU",
                )
            )
    return out


def _busy_links(samples: Columns, settings: Settings) -> dict[str, tuple[int, int, int, int]]:
    """Per GPU: the median (generation, max generation, width, max width) over the samples
    taken while it was busy; GPUs without enough busy samples are left out."""
    names = samples["name"]
    wanted = (
        GPU_PCIE_LINK_GENERATION,
        GPU_PCIE_LINK_GENERATION_MAX,
        GPU_PCIE_LINK_WIDTH,
        GPU_PCIE_LINK_WIDTH_MAX,
    )
    if not np.isin(names, wanted).any():
        return {}
    gpu_of_label = {label: parse_labels(label).get("gpu", "?") for label in set(samples["labels"])}
    series: dict[tuple[str, str], dict[int, float]] = {}
    for name in (GPU_UTILIZATION, *wanted):
        sel = names == name
        for t, label, value in zip(
            samples["t_ns"][sel], samples["labels"][sel], samples["value"][sel], strict=True
        ):
            series.setdefault((name, gpu_of_label[label]), {})[int(t)] = float(value)
    out = {}
    for (name, gpu), util in series.items():
        if name != GPU_UTILIZATION:
            continue
        busy = [t for t, v in util.items() if v >= settings.pcie_busy_ratio]
        values = []
        for metric in wanted:
            at = series.get((metric, gpu), {})
            seen = [at[t] for t in busy if t in at]
            values.append(seen)
        if min(len(v) for v in values) < settings.pcie_min_busy_samples:
            continue
        out[gpu] = tuple(int(np.median(v)) for v in values)  # type: ignore[assignment]
    return out


def _bandwidth(gen: int, width: int) -> float:
    return LANE_GBPS.get(gen, LANE_GBPS[max(LANE_GBPS)]) * max(width, 1)
