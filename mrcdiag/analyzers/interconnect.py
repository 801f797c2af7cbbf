"""Interconnect: achieved bus bandwidth, slow links or groups, exposed communication.

Bandwidth is computed from the transfer part of each collective only (from the last
arrival to completion), so a straggler does not masquerade as a slow network.
"""

from __future__ import annotations

import numpy as np

from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.instances import Instances
from mrcdiag.analyzers.settings import Settings
from mrcdiag.analyzers.summary import RankTimeSplit
from mrcdiag.metrics import SIZE_LABELS, size_bucket
from mrcdiag.store.reader import RunData
from mrcdiag.store.schema import OPS


def find_interconnect(
    run: RunData,
    inst: Instances,
    split: list[RankTimeSplit],
    busbw: np.ndarray,
    settings: Settings,
    expected_busbw_gbps: float | None = None,
) -> list[Finding]:
    """`split`: each rank's time split (summary.time_split); `busbw`: each instance's bus
    bandwidth in GB/s (summary.busbw_gbps)."""
    findings: list[Finding] = []
    if inst.n_instances:
        bucket = size_bucket(inst.nbytes)
        findings += _slow_groups(run, inst, busbw, bucket, settings)
        if expected_busbw_gbps:
            findings += _below_expected(inst, busbw, bucket, expected_busbw_gbps, settings)
    findings += _exposed(split, settings)
    findings += slow_host_links(run, inst, busbw, settings)
    return findings


def slow_host_links(
    run: RunData, inst: Instances, busbw: np.ndarray, settings: Settings
) -> list[Finding]:
    """Hosts whose every probed link is far slower than the links between other hosts.
    A host's own links are judged at the most they could carry: their round trip less
    the time its ends waited for a CPU in it (a host another process keeps busy waits
    for a CPU, not for the link), against the others' as measured."""
    pairs = [p for p in run.link_probe if p.get("gbps")]
    hosts = sorted({p["a"] for p in pairs} | {p["b"] for p in pairs})
    if len(hosts) < 2:
        return []
    out = []
    for host in hosts:
        mine = [_at_most_gbps(p) for p in pairs if host in (p["a"], p["b"])]
        others = [p["gbps"] for p in pairs if host not in (p["a"], p["b"])]
        if len(hosts) == 2:
            others = []  # one link: it is slow or not, but not one host's more than the other's
        if not mine or not others:
            continue
        # Every link of the host must be slow, its fastest included: one probe spoiled by
        # a burst of load on a shared host must not accuse it.
        ratio = float(max(mine) / np.median(others))
        if ratio >= settings.slow_group_ratio:
            continue
        ranks = tuple(r for r, info in run.ranks.items() if info.host == host)
        transfer_s = float(np.nansum(inst.transfer_ns) / 1e9) / max(len(run.ranks), 1)
        job_busbw = _job_busbw(inst, busbw, settings.min_bandwidth_bytes)
        out.append(
            Finding(
                kind="interconnect",
                severity="critical" if ratio < settings.slow_host_critical_ratio else "warning",
                cause="slow_link",
                time_lost_s=transfer_s * (1 - ratio),
                ranks=ranks,
                nodes=(host,),
                summary=f"every link of {host} carries at most {max(mine):.3f} GB/s against "
                f"{np.median(others):.3f} GB/s between the other hosts "
                f"({100 * ratio:.0f}%); every collective waits on them",
                evidence={
                    "located_by": "pairwise probe between hosts at attach (round trips over "
                    "the gloo path)",
                    "probe_gbps_of_host": [round(v, 4) for v in mine],
                    "probe_gbps_other_links": [round(v, 4) for v in others],
                    "job_busbw_gbps": job_busbw,
                },
                recommendation=f"check {host}'s NIC, cable and switch port (link rate, "
                "errors, shaping or QoS); move the job off it to confirm",
            )
        )
    return out


def _at_most_gbps(pair: dict) -> float:
    """What a probed link could carry at most: its round trip less the time its ends
    waited for a CPU during it."""
    waited = float(pair.get("cpu_wait_s") or 0.0)
    left = float(pair.get("rtt_s") or 0.0) - waited
    if waited <= 0 or "bytes" not in pair:
        return float(pair["gbps"])
    return 2 * pair["bytes"] / left / 1e9 if left > 0 else float("inf")


def _job_busbw(inst: Instances, bw: np.ndarray, min_bytes: int) -> dict[str, float]:
    if inst.n_instances == 0:
        return {}
    out = {}
    for op in np.unique(inst.op):
        vals = bw[(inst.op == op) & ~np.isnan(bw) & (inst.nbytes >= min_bytes)]
        if len(vals):
            out[OPS[int(op)]] = round(float(np.median(vals)), 4)
    return out


def _slow_groups(
    run: RunData, inst: Instances, bw: np.ndarray, bucket: np.ndarray, settings: Settings
) -> list[Finding]:
    out = []
    usable = ~np.isnan(bw) & (inst.nbytes >= settings.min_bandwidth_bytes)
    for op in np.unique(inst.op[usable]):
        for b in np.unique(bucket[usable & (inst.op == op)]):
            sel = usable & (inst.op == op) & (bucket == b)
            medians = {}
            for g in np.unique(inst.group[sel]):
                vals = bw[sel & (inst.group == g)]
                if len(vals) >= settings.min_instances:
                    medians[int(g)] = float(np.median(vals))
            if len(medians) < 2:
                continue
            best = max(medians.values())
            for g, value in medians.items():
                if value >= settings.slow_group_ratio * best:
                    continue
                info = run.groups[g]
                seconds = inst.transfer_ns[sel & (inst.group == g)] / 1e9
                lost = float(np.nansum(seconds * (1 - value / best)))
                out.append(
                    Finding(
                        kind="interconnect",
                        severity="warning",
                        cause="slow_link",
                        time_lost_s=lost,
                        ranks=info.ranks,
                        nodes=tuple(sorted({run.host_of(r) for r in info.ranks})),
                        summary=f"{OPS[int(op)]} of {SIZE_LABELS[int(b)]}-bucket messages in "
                        f"group {info.name} reaches {value:.2f} GB/s bus bandwidth, against "
                        f"{best:.2f} GB/s in the best comparable group",
                        evidence={
                            "busbw_gbps_by_group": {
                                run.groups[k].name: round(v, 3) for k, v in medians.items()
                            }
                        },
                        recommendation="test the links between these ranks' nodes "
                        "(mrcdiag probe, ib_write_bw, nccl-tests) and check their NIC "
                        "counters for errors and congestion",
                    )
                )
    return out


def _below_expected(
    inst: Instances, bw: np.ndarray, bucket: np.ndarray, expected: float, settings: Settings
) -> list[Finding]:
    out = []
    usable = ~np.isnan(bw) & (inst.nbytes >= settings.min_bandwidth_bytes)
    for op in np.unique(inst.op[usable]):
        sel = usable & (inst.op == op)
        if sel.sum() < settings.min_instances:
            continue
        top = int(bucket[sel].max())  # the largest messages approach the link's peak
        vals = bw[sel & (bucket == top)]
        value = float(np.median(vals))
        if value >= settings.low_of_expected_ratio * expected:
            continue
        seconds = inst.transfer_ns[sel] / 1e9
        out.append(
            Finding(
                kind="interconnect",
                severity="warning",
                cause="low_bus_bandwidth",
                time_lost_s=float(np.nansum(seconds * (1 - value / expected))),
                summary=f"{OPS[int(op)]} reaches {value:.2f} GB/s bus bandwidth on "
                f"{SIZE_LABELS[top]}-bucket messages, {100 * value / expected:.0f}% of the "
                f"expected {expected:g} GB/s",
                evidence={
                    "busbw_gbps": round(value, 3),
                    "expected_gbps": expected,
                    "instances": int(len(vals)),
                },
                recommendation="check NCCL's transport (NCCL_DEBUG=INFO), the NIC and "
                "topology settings, and run nccl-tests to get the fabric's real figure",
            )
        )
    return out


def _exposed(split: list[RankTimeSplit], settings: Settings) -> list[Finding]:
    if not split:
        return []
    duration = sum(r.step_time_s for r in split)
    exposed = sum(r.exposed_comm_s for r in split)
    if duration <= 0 or exposed / duration < settings.exposed_info_ratio:
        return []
    n = len(split)
    return [
        Finding(
            kind="interconnect",
            severity="info",  # efficiency: the workload's overlap, not a fault
            cause="exposed_communication",
            time_lost_s=exposed / n,
            ranks=tuple(r.rank for r in split),
            summary=f"{100 * exposed / duration:.0f}% of step time is spent blocked in "
            "collective transfers that nothing overlaps",
            evidence={"exposed_fraction": round(exposed / duration, 3)},
            recommendation="overlap communication with compute (async collectives, DDP "
            "bucketing, FSDP prefetch), or send fewer, larger messages",
        )
    ]
