"""Fabric collector: InfiniBand and RoCE counters per device and port, from sysfs.

Multi-plane fabrics (MRC and the like) split one NIC into several devices or ports, so
everything is reported per device *and* port: a degraded plane stands out. Counters are
made monotonic here: a 32-bit counter that wraps adds its wrap, a counter that goes back
after a device reset starts a new run, so Prometheus `rate()` never sees a negative step.
The sysfs root is a parameter so tests build the kernel's layout in a temporary folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from mrcdiag.collectors.base import Sample, SampleCollector

WORD_BYTES = 4  # port_xmit_data and port_rcv_data count 4-byte words
ERROR_COUNTERS = (
    "symbol_error",
    "link_error_recovery",
    "port_rcv_errors",
    "port_rcv_remote_physical_errors",
    "port_rcv_switch_relay_errors",
    "port_xmit_discards",
    "port_xmit_constraint_errors",
    "port_rcv_constraint_errors",
    "local_link_integrity_errors",
    "excessive_buffer_overrun_errors",
    "VL15_dropped",
)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.split()[0], 0)
    except (ValueError, IndexError):
        return None


def parse_rate_bytes_per_s(text: str | None) -> float | None:
    """'400 Gb/sec (4X NDR)' -> 5e10 bytes/s."""
    if not text:
        return None
    match = re.match(r"\s*([\d.]+)\s*Gb/sec", text)
    return float(match.group(1)) * 1e9 / 8 if match else None


class _Monotonic:
    """Turns raw hardware counters into never-decreasing totals."""

    def __init__(self) -> None:
        self.last: dict[tuple, int] = {}
        self.total: dict[tuple, int] = {}

    def update(self, key: tuple, raw: int) -> int:
        last = self.last.get(key)
        if last is None:
            total = raw
        elif raw >= last:
            total = self.total[key] + raw - last
        elif last < 1 << 32:  # a 32-bit counter wrapped
            total = self.total[key] + raw + (1 << 32) - last
        else:  # reset (driver reload, port reset): count from zero again
            total = self.total[key] + raw
        self.last[key], self.total[key] = raw, total
        return total

    def forget(self, prefix: tuple) -> None:
        for key in [k for k in self.last if k[: len(prefix)] == prefix]:
            del self.last[key], self.total[key]


class FabricCollector(SampleCollector):
    def __init__(
        self, common_labels: dict[str, str], sysfs_root: Path = Path("/sys/class/infiniband")
    ) -> None:
        super().__init__(common_labels)
        self.root = sysfs_root
        self.counters = _Monotonic()
        self.seen: set[tuple[str, str]] = set()

    def ports(self) -> list[tuple[str, str, Path]]:
        out = []
        try:
            devices = sorted(self.root.iterdir())
        except OSError:
            return out
        for device in devices:
            try:
                ports = sorted((device / "ports").iterdir())
            except OSError:
                continue
            out += [(device.name, port.name, port) for port in ports]
        return out

    def read(self) -> list[Sample]:
        out: list[Sample] = []
        present = set()
        for device, port, path in self.ports():
            present.add((device, port))
            out += self._port(device, port, path)
        for gone in self.seen - present:  # a device that disappeared: drop its state
            self.counters.forget(gone)
        self.seen = present
        return out

    def _counter(
        self,
        out: list[Sample],
        key: tuple,
        raw: int | None,
        name: str,
        labels: tuple,
        doc: str,
        scale: int = 1,
    ) -> None:
        if raw is None:
            return
        total = self.counters.update(key, raw)
        out.append(Sample(name, float(total * scale), labels, "counter", doc))

    def _port(self, device: str, port: str, path: Path) -> list[Sample]:
        out: list[Sample] = []
        link_layer = _read(path / "link_layer") or "InfiniBand"
        labels = (("device", device), ("port", port))
        state = _read(path / "state") or ""
        phys = _read(path / "phys_state") or ""
        out.append(
            Sample(
                "mrcdiag_fabric_port_up",
                1.0 if "ACTIVE" in state else 0.0,
                labels + (("link_layer", link_layer),),
                help="1 while the port is ACTIVE",
            )
        )
        out.append(
            Sample(
                "mrcdiag_fabric_port_physical_up",
                1.0 if "LinkUp" in phys else 0.0,
                labels,
                help="1 while the physical link is up",
            )
        )
        rate = parse_rate_bytes_per_s(_read(path / "rate"))
        if rate is not None:
            out.append(
                Sample(
                    "mrcdiag_fabric_port_rate_bytes_per_second",
                    rate,
                    labels,
                    help="Negotiated link rate",
                )
            )
        counters = path / "counters"
        key = (device, port)
        for raw_name, name, doc, scale in (
            (
                "port_xmit_data",
                "mrcdiag_fabric_port_transmit_bytes_total",
                "Bytes sent",
                WORD_BYTES,
            ),
            (
                "port_rcv_data",
                "mrcdiag_fabric_port_receive_bytes_total",
                "Bytes received",
                WORD_BYTES,
            ),
            ("port_xmit_packets", "mrcdiag_fabric_port_transmit_packets_total", "Packets sent", 1),
            (
                "port_rcv_packets",
                "mrcdiag_fabric_port_receive_packets_total",
                "Packets received",
                1,
            ),
            (
                "port_xmit_wait",
                "mrcdiag_fabric_port_transmit_wait_total",
                "Ticks with data to send and no credit: congestion",
                1,
            ),
            ("link_downed", "mrcdiag_fabric_port_link_downed_total", "Times the link went down", 1),
        ):
            self._counter(
                out, key + (raw_name,), _int(_read(counters / raw_name)), name, labels, doc, scale
            )
        for raw_name in ERROR_COUNTERS:
            self._counter(
                out,
                key + (raw_name,),
                _int(_read(counters / raw_name)),
                "mrcdiag_fabric_port_errors_total",
                labels + (("counter", raw_name),),
                "Port error counters",
            )
        hw = path / "hw_counters"
        try:
            hw_names = sorted(p.name for p in hw.iterdir())
        except OSError:
            hw_names = []
        for raw_name in hw_names:  # RoCE congestion and loss, whatever the driver exposes
            self._counter(
                out,
                key + ("hw", raw_name),
                _int(_read(hw / raw_name)),
                "mrcdiag_fabric_hw_counter_total",
                labels + (("counter", raw_name),),
                "Driver hardware counters (RoCE ECN, CNP, retransmissions, ...)",
            )
        return out


def create(
    common: dict[str, str],
    rank_processes: Callable | None = None,
    sysfs_root: Path | None = None,
) -> FabricCollector | None:
    """A fabric collector where the node has RDMA devices, else None.

    MRCDIAG_SYSFS_INFINIBAND points it elsewhere (a container that mounts the host's sysfs
    under another path, or a test tree)."""
    if sysfs_root is None:
        sysfs_root = Path(os.environ.get("MRCDIAG_SYSFS_INFINIBAND", "/sys/class/infiniband"))
    if not sysfs_root.is_dir() or not any(sysfs_root.iterdir()):
        return None
    return FabricCollector(common, sysfs_root)
