"""Links that trained down: a NIC port negotiated below the rate of the same port on the
other nodes, or below its own rate earlier in the run.

A dirty transceiver, a bad cable or a flaky switch port often leaves the link up at a
lower rate (400 Gb/s ports at 200 or 100, one plane of a multi-plane NIC at half speed):
no error counter moves and the port reads "ACTIVE", but every collective that crosses
it is slower. The node agents sample the negotiated rate (InfiniBand/RoCE ports from
sysfs, Ethernet NICs from the kernel), so the run holds what each port ran at.
"""

from __future__ import annotations

import numpy as np

from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.instances import Instances
from mrcdiag.analyzers.settings import Settings
from mrcdiag.metrics import (
    FABRIC_PORT_RATE,
    FABRIC_PORT_TRANSMIT_BYTES,
    HOST_NETWORK_SPEED,
    HOST_NETWORK_TRANSMIT_BYTES,
)
from mrcdiag.store.reader import RunData, series

RATES = {  # rate metric -> its transmit counter, same labels
    FABRIC_PORT_RATE: FABRIC_PORT_TRANSMIT_BYTES,
    HOST_NETWORK_SPEED: HOST_NETWORK_TRANSMIT_BYTES,
}


def find_degraded_links(run: RunData, inst: Instances, settings: Settings) -> list[Finding]:
    highest: dict[tuple[str, str], dict[str, float]] = {}  # (metric, port) -> host -> rate
    lowest: dict[tuple[str, str, str], float] = {}
    for host, samples in run.node_samples.items():
        for metric in RATES:
            mask = samples["name"] == metric
            for labels in set(samples["labels"][mask]):
                _, v = series(samples, metric, labels)
                v = v[v > 0]
                if len(v):
                    highest.setdefault((metric, labels), {})[host] = float(v.max())
                    lowest[(host, metric, labels)] = float(v.min())
    out = []
    for (host, metric, labels), low in sorted(lowest.items()):
        own = highest[(metric, labels)][host]
        peers = [r for h, r in highest[(metric, labels)].items() if h != host]
        usual = max(own, float(np.median(peers))) if peers else own
        if low >= settings.degraded_link_ratio * usual:
            continue
        out.append(_finding(run, inst, host, metric, labels, low, usual, own, peers, settings))
    return out


def _finding(
    run: RunData,
    inst: Instances,
    host: str,
    metric: str,
    labels: str,
    low: float,
    usual: float,
    own: float,
    peers: list[float],
    settings: Settings,
) -> Finding:
    samples = run.node_samples[host]
    _, sent = series(samples, RATES[metric], labels)
    used = len(sent) >= 2 and sent[-1] - sent[0] >= settings.used_link_bytes
    ranks = tuple(r for r, info in run.ranks.items() if info.host == host)
    ratio = low / usual
    lost = 0.0
    if used and ranks and inst.n_instances:
        transfer_s = float(np.nansum(inst.transfer_ns) / 1e9) / max(len(run.ranks), 1)
        lost = transfer_s * (1 - ratio)
    port = labels.replace(",", " ")
    dropped = low < settings.degraded_link_ratio * own
    return Finding(
        kind="interconnect",
        severity="warning" if used else "info",
        cause="link_degraded",
        time_lost_s=lost,
        ranks=ranks if used else (),
        nodes=(host,),
        summary=f"{port} on {host} ran at {_gbit(low)} Gb/s, "
        + (
            f"down from {_gbit(own)} Gb/s earlier in the run"
            if dropped
            else f"against {_gbit(usual)} Gb/s on the other nodes"
        )
        + (
            "; the job's traffic crossed it"
            if used
            else "; the job sent little through it (not what cost time)"
        ),
        evidence={
            "port": labels,
            "rate_gbit_s": _gbit(low),
            "usual_gbit_s": _gbit(usual),
            "peers_gbit_s": sorted(_gbit(r) for r in peers),
            "dropped_during_run": bool(dropped),
            "sent_bytes": float(sent[-1] - sent[0]) if len(sent) >= 2 else 0.0,
        },
        recommendation="the link trained down: check its transceiver, cable and switch "
        "port (ibstat or ethtool show the negotiated rate, the switch logs show the "
        "renegotiation); reseat or replace them, or drain the node",
    )


def _gbit(bytes_per_s: float) -> float:
    return round(bytes_per_s * 8 / 1e9, 1)
