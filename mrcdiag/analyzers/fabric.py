"""Fabric causes: congestion, packet loss or a flapping link during a slow stretch.

The node agents' NIC counters (InfiniBand/RoCE per device and port, and the host's
per-NIC drops and errors) are compared with the job's pace: a counter that moved while
the steps were slow names the cause of that stretch. Counters that moved while the job
kept its pace are reported as info: worth a look, not what cost time.
"""

from __future__ import annotations

import numpy as np

from mrcdiag.analyzers.common import job_step_time, steady_columns
from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.lateness import RankStepMatrix
from mrcdiag.analyzers.settings import Settings
from mrcdiag.metrics import (
    FABRIC_HW_COUNTER,
    FABRIC_PORT_ERRORS,
    FABRIC_PORT_LINK_DOWNED,
    FABRIC_PORT_TRANSMIT_WAIT,
    HOST_NETWORK_RECEIVE_DROPS,
    HOST_NETWORK_RECEIVE_ERRORS,
    HOST_NETWORK_TRANSMIT_DROPS,
)
from mrcdiag.store.reader import Columns, RunData
from mrcdiag.store.samples import parse_labels

# (metric name, counter label or None) -> cause
CAUSES: dict[tuple[str, str | None], str] = {
    (FABRIC_PORT_TRANSMIT_WAIT, None): "network_congestion",
    (FABRIC_HW_COUNTER, "np_ecn_marked_roce_packets"): "network_congestion",
    (FABRIC_HW_COUNTER, "np_cnp_sent"): "network_congestion",
    (FABRIC_HW_COUNTER, "rp_cnp_handled"): "network_congestion",
    (FABRIC_HW_COUNTER, "out_of_sequence"): "packet_loss",
    (FABRIC_HW_COUNTER, "packet_seq_err"): "packet_loss",
    (FABRIC_HW_COUNTER, "local_ack_timeout_err"): "packet_loss",
    (FABRIC_HW_COUNTER, "roce_adp_retrans"): "packet_loss",
    (FABRIC_HW_COUNTER, "implied_nak_seq_err"): "packet_loss",
    (FABRIC_PORT_ERRORS, "port_rcv_errors"): "packet_loss",
    (FABRIC_PORT_ERRORS, "symbol_error"): "packet_loss",
    (FABRIC_PORT_ERRORS, "port_xmit_discards"): "packet_loss",
    (HOST_NETWORK_RECEIVE_DROPS, None): "packet_loss",
    (HOST_NETWORK_TRANSMIT_DROPS, None): "packet_loss",
    (HOST_NETWORK_RECEIVE_ERRORS, None): "packet_loss",
    (FABRIC_PORT_LINK_DOWNED, None): "link_flap",
    (FABRIC_PORT_ERRORS, "link_error_recovery"): "link_flap",
}
ADVICE = {
    "network_congestion": "look at the switch ports on this path (ECN marking, PFC pauses, "
    "buffer use) and at other jobs sharing them; spread traffic over more planes or paths",
    "packet_loss": "check cables, optics and switch ports of this NIC (symbol errors, "
    "retransmissions); reseat or replace the link and rerun",
    "link_flap": "the link went down and came back: check the cable, optics and the switch "
    "port's logs; drain the node until it is fixed",
}


def slow_stretches(m: RankStepMatrix, settings: Settings) -> list[tuple[int, int, float]]:
    """(start_ns, end_ns, excess_s) of runs of consecutive slow steps."""
    cols = steady_columns(m.duration_s.shape[1], settings.warmup_steps)
    if len(cols) < 5:
        return []
    job = job_step_time(m.duration_s[:, cols])
    median = float(np.nanmedian(job))
    slow = job > settings.slow_step_ratio * median
    out = []
    i = 0
    while i < len(cols):
        if not slow[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(cols) and slow[j + 1]:
            j += 1
        first, last = cols[i], cols[j]
        span = m.spans.span_ns(np.arange(first, last + 1))  # some rank recorded them
        excess = float(np.nansum(job[i : j + 1] - median))
        if span is not None and excess >= 2 * median:  # a cause's worth, not one noisy step
            out.append((*span, excess))
        i = j + 1
    return out


def _moves(samples: Columns) -> list[tuple[str, str, str, np.ndarray, np.ndarray]]:
    """(cause, metric, labels, t, v) for every cause counter that increased."""
    out = []
    for labels in sorted(set(samples["labels"])):
        for name in sorted(set(samples["name"][samples["labels"] == labels])):
            fields = parse_labels(labels)
            cause = CAUSES.get((name, fields.get("counter"))) or CAUSES.get((name, None))
            if cause is None:
                continue
            mask = (samples["name"] == name) & (samples["labels"] == labels)
            t, v = samples["t_ns"][mask], samples["value"][mask]
            if len(v) >= 2 and v[-1] > v[0]:
                out.append((cause, name, labels, t, v))
    return out


def find_fabric_causes(run: RunData, m: RankStepMatrix, settings: Settings) -> list[Finding]:
    stretches = slow_stretches(m, settings)
    before_ns = int(settings.counter_before_stretch_s * 1e9)
    findings = []
    for host, samples in sorted(run.node_samples.items()):
        by_cause: dict[str, dict] = {}
        for cause, name, labels, t, v in _moves(samples):
            grew_at = t[1:][np.diff(v) > 0]
            hit = [
                s for s in stretches if np.any((grew_at >= s[0] - before_ns) & (grew_at <= s[1]))
            ]
            entry = by_cause.setdefault(cause, {"counters": {}, "stretches": set()})
            short = name.removeprefix("mrcdiag_").removesuffix("_total")
            entry["counters"][f"{short}{{{labels}}}"] = float(v[-1] - v[0])
            entry["stretches"].update(hit)
        for cause, entry in by_cause.items():
            hit = sorted(entry["stretches"])
            lost = float(sum(s[2] for s in hit))
            ranks = tuple(r for r, i in run.ranks.items() if i.host == host)
            findings.append(
                Finding(
                    kind="interconnect",
                    severity="warning" if hit else "info",
                    cause=cause,
                    time_lost_s=lost,
                    ranks=ranks,
                    nodes=(host,),
                    summary=(
                        f"{cause.replace('_', ' ')} on {host}: its NIC counters moved during "
                        f"{len(hit)} slow stretch(es) of the job"
                        if hit
                        else f"{cause.replace('_', ' ')} counters moved on {host}, while "
                        "the job kept its pace"
                    ),
                    evidence={
                        "counter_increase": entry["counters"],
                        "slow_stretches_s": [round((s[1] - s[0]) / 1e9, 2) for s in hit],
                    },
                    recommendation=ADVICE[cause],
                )
            )
    return findings
