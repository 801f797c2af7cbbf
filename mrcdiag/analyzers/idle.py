"""Idle compute: time the ranks spent not computing, and on what.

On CPU jobs the ranks are the compute; on GPU jobs the same waits leave the GPU idle, and
where NVML samples exist, low utilization during steps is reported too.
"""

from __future__ import annotations

import numpy as np

from mrcdiag.analyzers.common import steady_columns
from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.lateness import RankStepMatrix
from mrcdiag.analyzers.settings import Settings
from mrcdiag.metrics import GPU_UTILIZATION
from mrcdiag.store.reader import RunData


def find_idle(
    run: RunData, m: RankStepMatrix, explained: tuple[int, ...], settings: Settings
) -> list[Finding]:
    """Efficiency: time the ranks spend waiting. `explained`: the straggling ranks found,
    whom the waits are for."""
    cols = steady_columns(m.duration_s.shape[1], settings.warmup_steps)
    if len(cols) == 0:
        return []
    duration = np.nansum(m.duration_s[:, cols], axis=1)
    total = float(np.sum(duration))
    if total <= 0:
        return []
    wait = np.nansum(m.wait_s[:, cols], axis=1)
    data = np.nansum(m.data_wait_s[:, cols], axis=1)
    n = len(m.ranks)
    findings = []
    wait_fraction = float(wait.sum() / total)
    per_rank_wait = {
        int(r): round(float(w / d), 3)
        for r, w, d in zip(m.ranks, wait, duration, strict=True)
        if d > 0
    }
    if wait_fraction >= settings.idle_wait_info_ratio:
        findings.append(
            Finding(
                kind="idle_compute",
                severity="info",  # efficiency: whom they wait for is the straggler finding
                cause="waiting_on_collectives",
                time_lost_s=float(wait.sum() / n),
                ranks=tuple(int(r) for r in m.ranks),
                summary=f"ranks spent {100 * wait_fraction:.0f}% of their step time waiting "
                "for late peers at collectives"
                + (f" (the straggler: rank {', '.join(map(str, explained))})" if explained else ""),
                evidence={"wait_fraction_per_rank": _top(per_rank_wait)},
                recommendation="fix the straggler that the others wait for; if none is "
                "named, the waits come from uneven work between ranks (balance batches)",
            )
        )
    data_fraction = data / np.maximum(duration, 1e-12)
    slow_input = data_fraction >= settings.data_wait_info_ratio
    if slow_input.sum() >= max(2, 0.5 * n):  # job-wide; one rank alone is a straggler
        overall = float(data.sum() / total)
        findings.append(
            Finding(
                kind="idle_compute",
                severity="info",  # every rank alike: the input pipeline's shape, not a fault
                cause="data_loading",
                time_lost_s=float(data.sum() / n),
                ranks=tuple(int(r) for r in m.ranks[slow_input]),
                summary=f"ranks spent {100 * overall:.0f}% of their step time waiting for "
                "their DataLoader",
                evidence={
                    "data_wait_fraction_per_rank": _top(
                        {
                            int(r): round(float(f), 3)
                            for r, f in zip(m.ranks, data_fraction, strict=True)
                        }
                    )
                },
                recommendation="raise num_workers and prefetch_factor, use pin_memory, and "
                "check the storage the data is read from",
            )
        )
    findings += _gpu_idle(run, settings.gpu_idle_info_ratio)
    return findings


def _top(values: dict[int, float], k: int = 8) -> dict[str, float]:
    return {str(r): v for r, v in sorted(values.items(), key=lambda kv: -kv[1])[:k]}


def _gpu_idle(run: RunData, idle_below: float) -> list[Finding]:
    out = []
    for host, samples in run.node_samples.items():
        mask = samples["name"] == GPU_UTILIZATION
        if mask.sum() < 3:
            continue
        utilization = float(np.mean(samples["value"][mask]))
        if utilization < idle_below:
            out.append(
                Finding(
                    kind="idle_compute",
                    severity="info",  # efficiency: the workload keeps its GPUs this busy
                    cause="low_gpu_utilization",
                    time_lost_s=0.0,
                    nodes=(host,),
                    summary=f"GPUs on {host} were busy {100 * utilization:.0f}% of the time",
                    evidence={"mean_gpu_utilization": round(utilization, 3)},
                    recommendation="look for host-side stalls between kernels: data loading, "
                    "synchronisations, small kernels (CUDA graphs, larger batches)",
                )
            )
    return out
