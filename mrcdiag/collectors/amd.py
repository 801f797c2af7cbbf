"""AMD collector (amdsmi): the GPU questions of the NVML collector, answered on ROCm.

Same metric names where the meaning is the same (GFX activity is utilization, UMC
activity is memory bandwidth utilization, the GFX clock is the SM clock); XGMI traffic
has its own names. NOT_SUPPORTED drops one metric on one GPU; any other error of one
call is logged once and that metric is skipped this time. The module is a parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mrcdiag.collectors.base import Sample, SampleCollector
from mrcdiag.log import warn_once

RankProcess = tuple[int, int, int]


class AmdCollector(SampleCollector):
    def __init__(
        self,
        common_labels: dict[str, str],
        amdsmi: Any,
        rank_processes: Callable[[], list[RankProcess]] = list,
    ) -> None:
        super().__init__(common_labels)
        self.smi = amdsmi
        self.rank_processes = rank_processes
        amdsmi.amdsmi_init(amdsmi.AmdSmiInitFlags.INIT_AMD_GPUS)
        self.handles = list(amdsmi.amdsmi_get_processor_handles())
        self.unsupported: set[tuple[int, str]] = set()

    def _get(self, gpu: int, metric: str, fn: Any, *args: Any) -> Any:
        if (gpu, metric) in self.unsupported:
            return None
        smi = self.smi
        try:
            return fn(*args)
        except smi.AmdSmiLibraryException as exc:
            if exc.get_error_code() == smi.AmdSmiRetCode.ERR_NOT_SUPPORTED:
                self.unsupported.add((gpu, metric))
            else:
                warn_once(f"amdsmi-{metric}", f"amdsmi {metric} failed: {exc}")
            return None

    def read(self) -> list[Sample]:
        out: list[Sample] = []
        smi = self.smi
        for gpu, h in enumerate(self.handles):
            labels = (("gpu", str(gpu)),)

            def add(
                name: str,
                value: Any,
                scale: float = 1.0,
                kind: str = "gauge",
                doc: str = "",
                extra: tuple = (),
                labels: tuple = labels,
            ) -> None:
                if isinstance(value, (int, float)):
                    out.append(Sample(name, float(value) * scale, labels + extra, kind, doc))

            activity = self._get(gpu, "activity", smi.amdsmi_get_gpu_activity, h) or {}
            add(
                "mrcdiag_gpu_utilization_ratio",
                activity.get("gfx_activity"),
                0.01,
                doc="Share of time the GFX engine was busy",
            )
            add(
                "mrcdiag_gpu_memory_bandwidth_utilization_ratio",
                activity.get("umc_activity"),
                0.01,
                doc="Memory controller activity",
            )
            vram = self._get(gpu, "vram", smi.amdsmi_get_gpu_vram_usage, h) or {}
            add(
                "mrcdiag_gpu_memory_used_bytes",
                vram.get("vram_used"),
                float(1 << 20),
                doc="Device memory in use",
            )
            add(
                "mrcdiag_gpu_memory_total_bytes",
                vram.get("vram_total"),
                float(1 << 20),
                doc="Device memory",
            )
            clock = (
                self._get(gpu, "clock", smi.amdsmi_get_clock_info, h, smi.AmdSmiClkType.GFX) or {}
            )
            add("mrcdiag_gpu_sm_clock_hertz", clock.get("clk"), 1e6, doc="Current GFX clock")
            add(
                "mrcdiag_gpu_sm_clock_max_hertz", clock.get("max_clk"), 1e6, doc="Maximum GFX clock"
            )
            power = self._get(gpu, "power", smi.amdsmi_get_power_info, h) or {}
            current = power.get("current_socket_power")
            if not isinstance(current, (int, float)):
                current = power.get("average_socket_power")
            add("mrcdiag_gpu_power_watts", current, doc="Socket power")
            add("mrcdiag_gpu_power_limit_watts", power.get("power_limit"), doc="Power limit")
            temp = self._get(
                gpu,
                "temperature",
                smi.amdsmi_get_temp_metric,
                h,
                smi.AmdSmiTemperatureType.EDGE,
                smi.AmdSmiTemperatureMetric.CURRENT,
            )
            add("mrcdiag_gpu_temperature_celsius", temp, doc="Edge temperature")
            ecc = self._get(gpu, "ecc", smi.amdsmi_get_gpu_total_ecc_count, h) or {}
            add(
                "mrcdiag_gpu_ecc_errors_total",
                ecc.get("correctable_count"),
                kind="counter",
                doc="ECC errors",
                extra=(("type", "corrected"),),
            )
            add(
                "mrcdiag_gpu_ecc_errors_total",
                ecc.get("uncorrectable_count"),
                kind="counter",
                doc="ECC errors",
                extra=(("type", "uncorrected"),),
            )
            pci = self._get(gpu, "pcie", smi.amdsmi_get_gpu_pci_throughput, h) or {}
            add("mrcdiag_gpu_pcie_transmit_bytes_per_second", pci.get("sent"), doc="PCIe sent")
            add(
                "mrcdiag_gpu_pcie_receive_bytes_per_second",
                pci.get("received"),
                doc="PCIe received",
            )
            metrics = self._get(gpu, "metrics", smi.amdsmi_get_gpu_metrics_info, h) or {}
            for key, name in (
                ("xgmi_write_data_acc", "transmit"),
                ("xgmi_read_data_acc", "receive"),
            ):
                links = metrics.get(key)
                if isinstance(links, (list, tuple)):
                    total = sum(v for v in links if isinstance(v, int) and v >= 0)
                    add(
                        f"mrcdiag_gpu_xgmi_{name}_bytes_total",
                        total,
                        1024.0,
                        "counter",
                        f"XGMI data {name}, all links",
                    )
            throttle = metrics.get("throttle_status")
            if isinstance(throttle, int):
                add(
                    "mrcdiag_gpu_clock_event_active",
                    1.0 if throttle else 0.0,
                    extra=(("reason", "amd_throttle"),),
                    doc="1 while the firmware reports throttling",
                )
        return out


def create(
    common: dict[str, str], rank_processes: Callable | None = None, amdsmi: Any = None
) -> AmdCollector | None:
    """An amdsmi collector, or None where ROCm's library is absent."""
    if amdsmi is None:
        try:
            import amdsmi  # type: ignore[import-not-found]
        except ImportError:
            return None  # not an AMD node: nothing to say
    try:
        collector = AmdCollector(common, amdsmi, rank_processes or list)
    except Exception as exc:  # amdsmi raises its own exception types
        warn_once("no-amdsmi", f"no AMD GPU metrics on this node (amdsmi: {exc})")
        return None
    return collector if collector.handles else None
