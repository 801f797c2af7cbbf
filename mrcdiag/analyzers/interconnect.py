"""Interconnect: achieved bus bandwidth, slow links or groups, exposed communication.

Bandwidth is computed from the transfer part of each collective only (from the last
arrival to completion), so a straggler does not masquerade as a slow network.
"""

from __future__ import annotations

import numpy as np

from mrcdiag.analyzers.common import steady_columns
from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.instances import Instances
from mrcdiag.analyzers.lateness import RankStepMatrix
from mrcdiag.analyzers.summary import busbw_gbps, group_sizes
from mrcdiag.collectors.ranks import SIZE_LABELS, size_bucket
from mrcdiag.store.reader import RunData
from mrcdiag.store.schema import OPS

SLOW_GROUP = 0.5  # a group below half the best comparable group's bandwidth
LOW_OF_EXPECTED = 0.5
EXPOSED_WARNING = 0.30
MIN_INSTANCES = 5
MIN_BYTES = 64 << 10  # smaller messages measure latency, not bandwidth


def find_interconnect(
    run: RunData, inst: Instances, m: RankStepMatrix, expected_busbw_gbps: float | None = None
) -> list[Finding]:
    findings: list[Finding] = []
    if inst.n_instances:
        sizes = group_sizes(run, inst.group)
        bw = busbw_gbps(inst, sizes)
        bucket = size_bucket(inst.nbytes)
        findings += _slow_groups(run, inst, bw, bucket, sizes)
        if expected_busbw_gbps:
            findings += _below_expected(inst, bw, bucket, expected_busbw_gbps)
    findings += _exposed(m)
    findings += slow_host_links(run, inst)
    return findings


def slow_host_links(run: RunData, inst: Instances) -> list[Finding]:
    """Hosts whose every probed link is far slower than the links between other hosts."""
    pairs = [p for p in run.link_probe if p.get("gbps")]
    hosts = sorted({p["a"] for p in pairs} | {p["b"] for p in pairs})
    if len(hosts) < 2:
        return []
    out = []
    for host in hosts:
        mine = [p["gbps"] for p in pairs if host in (p["a"], p["b"])]
        others = [p["gbps"] for p in pairs if host not in (p["a"], p["b"])]
        if len(hosts) == 2:
            others = []  # one link: it is slow or not, but not one host's more than the other's
        if not mine or not others:
            continue
        # Every link of the host must be slow, its fastest included: one probe spoiled by
        # a burst of load on a shared host must not accuse it.
        ratio = float(max(mine) / np.median(others))
        if ratio >= SLOW_GROUP:
            continue
        ranks = tuple(r for r, info in run.ranks.items() if info.host == host)
        transfer_s = float(np.nansum(inst.transfer_ns) / 1e9) / max(len(run.ranks), 1)
        busbw = _job_busbw(run, inst)
        out.append(
            Finding(
                kind="interconnect",
                severity="critical" if ratio < 0.2 else "warning",
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
                    "job_busbw_gbps": busbw,
                },
                recommendation=f"check {host}'s NIC, cable and switch port (link rate, "
                "errors, shaping or QoS); move the job off it to confirm",
            )
        )
    return out


def _job_busbw(run: RunData, inst: Instances) -> dict[str, float]:
    if inst.n_instances == 0:
        return {}
    bw = busbw_gbps(inst, group_sizes(run, inst.group))
    out = {}
    for op in np.unique(inst.op):
        vals = bw[(inst.op == op) & ~np.isnan(bw) & (inst.nbytes >= MIN_BYTES)]
        if len(vals):
            out[OPS[int(op)]] = round(float(np.median(vals)), 4)
    return out


def _slow_groups(run, inst, bw, bucket, sizes) -> list[Finding]:  # noqa: ANN001
    out = []
    usable = ~np.isnan(bw) & (inst.nbytes >= MIN_BYTES)
    for op in np.unique(inst.op[usable]):
        for b in np.unique(bucket[usable & (inst.op == op)]):
            sel = usable & (inst.op == op) & (bucket == b)
            medians = {}
            for g in np.unique(inst.group[sel]):
                vals = bw[sel & (inst.group == g)]
                if len(vals) >= MIN_INSTANCES:
                    medians[int(g)] = float(np.median(vals))
            if len(medians) < 2:
                continue
            best = max(medians.values())
            for g, value in medians.items():
                if value >= SLOW_GROUP * best:
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


def _below_expected(inst, bw, bucket, expected) -> list[Finding]:  # noqa: ANN001
    out = []
    usable = ~np.isnan(bw) & (inst.nbytes >= MIN_BYTES)
    for op in np.unique(inst.op[usable]):
        sel = usable & (inst.op == op)
        if sel.sum() < MIN_INSTANCES:
            continue
        top = int(bucket[sel].max())  # the largest messages approach the link's peak
        vals = bw[sel & (bucket == top)]
        value = float(np.median(vals))
        if value >= LOW_OF_EXPECTED * expected:
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


def _exposed(m: RankStepMatrix) -> list[Finding]:
    cols = steady_columns(m.duration_s.shape[1])
    if len(cols) == 0:
        return []
    duration = float(np.nansum(m.duration_s[:, cols]))
    transfer = np.clip(m.blocked_s[:, cols] - m.wait_s[:, cols], 0, None)
    exposed = float(np.nansum(transfer))
    if duration <= 0 or exposed / duration < EXPOSED_WARNING:
        return []
    n = len(m.ranks)
    return [
        Finding(
            kind="interconnect",
            severity="warning",
            cause="exposed_communication",
            time_lost_s=exposed / n,
            ranks=tuple(int(r) for r in m.ranks),
            summary=f"{100 * exposed / duration:.0f}% of step time is spent blocked in "
            "collective transfers that nothing overlaps",
            evidence={"exposed_fraction": round(exposed / duration, 3)},
            recommendation="overlap communication with compute (async collectives, DDP "
            "bucketing, FSDP prefetch), or send fewer, larger messages",
        )
    ]
