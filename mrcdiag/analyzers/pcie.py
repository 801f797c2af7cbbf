"""GPUs whose PCIe link trained down: a lower generation or fewer lanes than the link can
run (or, where the driver does not say, than the node's other GPUs run), while busy.

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
        links = _busy_links(samples, settings)
        for gpu, (gen, width, gen_max, width_max) in links.items():
            if gen_max is not None and width_max is not None:
                reference, against = (gen_max, width_max), "the"
            else:  # the driver does not say what the link can run: its peers do
                peers = [(g, w) for other, (g, w, _, _) in links.items() if other != gpu]
                if not peers:
                    continue
                reference = (
                    int(np.median([g for g, _ in peers])),
                    int(np.median([w for _, w in peers])),
                )
                against = "its peers'"
            if gen >= reference[0] and width >= reference[1]:
                continue
            ranks = ranks_on_gpu(run, host, gpu)
            lost = sum(
                f.time_lost_s
                for f in stragglers
                if f.kind == "straggler" and set(f.ranks) & set(ranks)
            )
            share = _bandwidth(gen, width) / _bandwidth(*reference)
            out.append(
                Finding(
                    kind="interconnect",
                    severity="warning",
                    cause="pcie_degraded",
                    time_lost_s=lost,
                    ranks=tuple(ranks),
                    nodes=(host,),
                    summary=f"GPU {gpu} on {host} runs its PCIe link at Gen{gen} x{width} "
                    f"while busy, below {against} Gen{reference[0]} x{reference[1]}: host-device "
                    f"copies get {100 * share:.0f}% of the link's bandwidth",
                    evidence={
                        "gpu": gpu,
                        "pcie_now": f"Gen{gen} x{width}",
                        "pcie_max" if against == "the" else "pcie_peers": (
                            f"Gen{reference[0]} x{reference[1]}"
                        ),
                        "bandwidth_share": round(share, 3),
                    },
                    recommendation="reseat the card and check its riser and slot (nvidia-smi -q "
                    "-d PCIE shows the link; the BIOS may pin the slot's generation); until then "
                    "expect slower host-device copies on this GPU",
                )
            )
    return out


def _busy_links(
    samples: Columns, settings: Settings
) -> dict[str, tuple[int, int, int | None, int | None]]:
    """Per GPU: the median (generation, width, max generation, max width) over the samples
    taken while it was busy (the maxima None where the driver does not give them); GPUs
    without enough busy samples of their link are left out."""
    names = samples["name"]
    now = (GPU_PCIE_LINK_GENERATION, GPU_PCIE_LINK_WIDTH)
    most = (GPU_PCIE_LINK_GENERATION_MAX, GPU_PCIE_LINK_WIDTH_MAX)
    if not np.isin(names, now).any():
        return {}
    gpu_of_label = {label: parse_labels(label).get("gpu", "?") for label in set(samples["labels"])}
    series: dict[tuple[str, str], dict[int, float]] = {}
    for name in (GPU_UTILIZATION, *now, *most):
        sel = names == name
        for t, label, value in zip(
            samples["t_ns"][sel], samples["labels"][sel], samples["value"][sel], strict=True
        ):
            series.setdefault((name, gpu_of_label[label]), {})[int(t)] = float(value)
    out: dict[str, tuple[int, int, int | None, int | None]] = {}
    for (name, gpu), util in series.items():
        if name != GPU_UTILIZATION:
            continue
        busy = [t for t, v in util.items() if v >= settings.pcie_busy_ratio]
        gen, width, gen_max, width_max = (
            _busy_median(series.get((metric, gpu), {}), busy, settings.pcie_min_busy_samples)
            for metric in (*now, *most)
        )
        if gen is not None and width is not None:
            out[gpu] = (gen, width, gen_max, width_max)
    return out


def _busy_median(values_at: dict[int, float], busy: list[int], needed: int) -> int | None:
    """The median of a GPU's samples taken at its busy times; None with fewer than needed."""
    seen = [values_at[t] for t in busy if t in values_at]
    return int(np.median(seen)) if len(seen) >= needed else None


def _bandwidth(gen: int, width: int) -> float:
    return LANE_GBPS.get(gen, LANE_GBPS[max(LANE_GBPS)]) * max(width, 1)
