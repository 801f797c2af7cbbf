"""NVML collector (nvidia-ml-py): utilization, memory bandwidth, clocks and their event
(throttle) reasons, power, temperature, PCIe/NVLink traffic, ECC and XID errors, and
which rank's process runs on each GPU.

On Hopper and later the GPU Performance Monitoring (GPM) metrics give DRAM bandwidth,
SM and tensor activity, PCIe and NVLink rates between two samples; older GPUs fall back
to nvmlDeviceGetUtilizationRates().memory, nvmlDeviceGetPcieThroughput and the NVLink
throughput field values. A metric a GPU does not support (NVMLError_NotSupported) is
dropped for that GPU only; a GPU that fell off the bus (NVMLError_GpuIsLost) is reported
down and the others go on. The NVML module is a parameter, so tests pass a fake that
answers like the library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mrcdiag.collectors.base import Sample, SampleCollector
from mrcdiag.log import warn_once
from mrcdiag.metrics import (
    GPU_PCIE_LINK_GENERATION,
    GPU_PCIE_LINK_GENERATION_MAX,
    GPU_PCIE_LINK_WIDTH,
    GPU_PCIE_LINK_WIDTH_MAX,
)

RankProcess = tuple[int, int, int]  # (rank, local_rank, pid)

# bit -> name, from NVML's nvmlClocksEventReasons
CLOCK_EVENT_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clock_setting",
}
GPM_PERCENT = {  # GPM metric constant name -> our ratio metric
    "NVML_GPM_METRIC_DRAM_BW_UTIL": "mrcdiag_gpu_memory_bandwidth_utilization_ratio",
    "NVML_GPM_METRIC_SM_UTIL": "mrcdiag_gpu_sm_activity_ratio",
    "NVML_GPM_METRIC_ANY_TENSOR_UTIL": "mrcdiag_gpu_tensor_activity_ratio",
}
MIB = 1 << 20
NVLINK_LINKS = 18


class _Unsupported(Exception):
    """This GPU does not have this metric."""


class _Lost(Exception):
    """This GPU is gone (fell off the bus, reset)."""


class NvmlCollector(SampleCollector):
    def __init__(
        self,
        common_labels: dict[str, str],
        nvml: Any,
        rank_processes: Callable[[], list[RankProcess]] = list,
    ) -> None:
        super().__init__(common_labels)
        self.nvml = nvml
        self.rank_processes = rank_processes
        nvml.nvmlInit()
        self.count = nvml.nvmlDeviceGetCount()
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(self.count)]
        self.names = [self._text(self._call(nvml.nvmlDeviceGetName, h, "")) for h in self.handles]
        self.uuids = [self._text(self._call(nvml.nvmlDeviceGetUUID, h, "")) for h in self.handles]
        self.unsupported: set[tuple[int, str]] = set()
        self.lost: set[int] = set()
        self.gpm_previous: dict[int, Any] = {}
        self.gpm_supported = {i: self._gpm_supported(h) for i, h in enumerate(self.handles)}
        self.xid_counts: dict[tuple[int, int], int] = {}
        self.event_set = self._xid_events()

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    def _call(self, fn: Any, *args: Any) -> Any:
        default = args[-1]
        try:
            return fn(*args[:-1])
        except self.nvml.NVMLError:
            return default

    def _gpm_supported(self, handle: Any) -> bool:
        try:
            return bool(self.nvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
        except (self.nvml.NVMLError, AttributeError):
            return False

    def _xid_events(self) -> Any:
        nvml = self.nvml
        try:
            event_set = nvml.nvmlEventSetCreate()
        except (nvml.NVMLError, AttributeError):
            return None
        for handle in self.handles:
            try:
                nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, event_set)
            except nvml.NVMLError:
                continue
        return event_set

    def _get(self, gpu: int, metric: str, fn: Any, *args: Any) -> Any:
        """One NVML call for one GPU: NotSupported drops the metric, GpuIsLost the GPU."""
        if (gpu, metric) in self.unsupported:
            raise _Unsupported(metric)
        nvml = self.nvml
        try:
            return fn(*args)
        except nvml.NVMLError_NotSupported:
            self.unsupported.add((gpu, metric))
            raise _Unsupported(metric) from None
        except nvml.NVMLError_GpuIsLost:
            raise _Lost() from None

    def read(self) -> list[Sample]:
        out: list[Sample] = []
        pid_to_rank = {pid: (rank, local) for rank, local, pid in self.rank_processes()}
        self._drain_xid_events()
        for gpu, handle in enumerate(self.handles):
            labels = (("gpu", str(gpu)),)
            if gpu in self.lost:
                out.append(self._up(gpu, 0.0))
                continue
            try:
                samples = self._read_gpu(gpu, handle, labels, pid_to_rank)
            except _Lost:
                self.lost.add(gpu)
                warn_once(
                    f"gpu-lost-{gpu}", f"GPU {gpu} ({self.uuids[gpu]}) is lost; reporting it down"
                )
                out.append(self._up(gpu, 0.0))
                continue
            out.append(self._up(gpu, 1.0))
            out += samples
        for (gpu, xid), count in sorted(self.xid_counts.items()):
            out.append(
                Sample(
                    "mrcdiag_gpu_xid_errors_total",
                    count,
                    (("gpu", str(gpu)), ("xid", str(xid))),
                    "counter",
                    "XID critical errors reported by the driver",
                )
            )
        return out

    def _up(self, gpu: int, value: float) -> Sample:
        return Sample(
            "mrcdiag_gpu_up",
            value,
            (("gpu", str(gpu)), ("uuid", self.uuids[gpu]), ("name", self.names[gpu])),
            help="1 while the GPU answers NVML, 0 once it is lost",
        )

    def _read_gpu(self, gpu: int, h: Any, labels: tuple, pid_to_rank: dict) -> list[Sample]:
        nvml = self.nvml
        out: list[Sample] = []

        def add(
            name: str,
            metric: str,
            fn: Any,
            *args: Any,
            scale: float = 1.0,
            kind: str = "gauge",
            doc: str = "",
            extra: tuple = (),
        ) -> Any:
            try:
                value = self._get(gpu, metric, fn, *args)
            except _Unsupported:
                return None
            except nvml.NVMLError as exc:
                warn_once(f"nvml-{metric}", f"NVML {metric} failed: {exc}")
                return None
            if value is not None and scale is not None:
                out.append(Sample(name, float(value) * scale, labels + extra, kind, doc))
            return value

        util = None
        try:
            util = self._get(gpu, "utilization", nvml.nvmlDeviceGetUtilizationRates, h)
        except _Unsupported:
            pass
        if util is not None:
            out.append(
                Sample(
                    "mrcdiag_gpu_utilization_ratio",
                    util.gpu / 100.0,
                    labels,
                    help="Share of time a kernel was running",
                )
            )
        gpm = self._gpm(gpu, h, labels) if self.gpm_supported.get(gpu) else []
        out += gpm
        if util is not None and not any(
            s.name == "mrcdiag_gpu_memory_bandwidth_utilization_ratio" for s in gpm
        ):
            out.append(
                Sample(
                    "mrcdiag_gpu_memory_bandwidth_utilization_ratio",
                    util.memory / 100.0,
                    labels,
                    help="Share of time device memory was read or written",
                )
            )
        memory = None
        try:
            memory = self._get(gpu, "memory", nvml.nvmlDeviceGetMemoryInfo, h)
        except _Unsupported:
            pass
        if memory is not None:
            out.append(
                Sample(
                    "mrcdiag_gpu_memory_used_bytes",
                    float(memory.used),
                    labels,
                    help="Device memory in use",
                )
            )
            out.append(
                Sample(
                    "mrcdiag_gpu_memory_total_bytes",
                    float(memory.total),
                    labels,
                    help="Device memory",
                )
            )
        add(
            "mrcdiag_gpu_sm_clock_hertz",
            "sm_clock",
            nvml.nvmlDeviceGetClockInfo,
            h,
            nvml.NVML_CLOCK_SM,
            scale=1e6,
            doc="Current SM clock",
        )
        add(
            "mrcdiag_gpu_sm_clock_max_hertz",
            "sm_clock_max",
            nvml.nvmlDeviceGetMaxClockInfo,
            h,
            nvml.NVML_CLOCK_SM,
            scale=1e6,
            doc="Maximum SM clock",
        )
        reasons_fn = (
            getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
            or nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        )
        mask = add("", "clock_events", reasons_fn, h, scale=None)
        if mask is not None:
            for bit, reason in CLOCK_EVENT_REASONS.items():
                out.append(
                    Sample(
                        "mrcdiag_gpu_clock_event_active",
                        1.0 if mask & bit else 0.0,
                        labels + (("reason", reason),),
                        help="1 while this reason holds the clocks down",
                    )
                )
        add(
            "mrcdiag_gpu_power_watts",
            "power",
            nvml.nvmlDeviceGetPowerUsage,
            h,
            scale=1e-3,
            doc="Power draw",
        )
        add(
            "mrcdiag_gpu_power_limit_watts",
            "power_limit",
            nvml.nvmlDeviceGetEnforcedPowerLimit,
            h,
            scale=1e-3,
            doc="Enforced power limit",
        )
        add(
            "mrcdiag_gpu_temperature_celsius",
            "temperature",
            nvml.nvmlDeviceGetTemperature,
            h,
            nvml.NVML_TEMPERATURE_GPU,
            doc="GPU temperature",
        )
        for kind, error_type in (
            ("corrected", nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
            ("uncorrected", nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        ):
            add(
                "mrcdiag_gpu_ecc_errors_total",
                f"ecc_{kind}",
                nvml.nvmlDeviceGetTotalEccErrors,
                h,
                error_type,
                nvml.NVML_VOLATILE_ECC,
                kind="counter",
                doc="ECC errors since the driver loaded",
                extra=(("type", kind),),
            )
        if not any(s.name == "mrcdiag_gpu_pcie_transmit_bytes_per_second" for s in gpm):
            add(
                "mrcdiag_gpu_pcie_transmit_bytes_per_second",
                "pcie_tx",
                nvml.nvmlDeviceGetPcieThroughput,
                h,
                nvml.NVML_PCIE_UTIL_TX_BYTES,
                scale=1024.0,
                doc="PCIe traffic sent",
            )
            add(
                "mrcdiag_gpu_pcie_receive_bytes_per_second",
                "pcie_rx",
                nvml.nvmlDeviceGetPcieThroughput,
                h,
                nvml.NVML_PCIE_UTIL_RX_BYTES,
                scale=1024.0,
                doc="PCIe traffic received",
            )
        # the PCIe link as trained now and at most: an idle link drops its generation to
        # save power, so the analysis compares them while the GPU is busy
        for name, metric, fn in (
            (GPU_PCIE_LINK_GENERATION, "pcie_gen", nvml.nvmlDeviceGetCurrPcieLinkGeneration),
            (GPU_PCIE_LINK_GENERATION_MAX, "pcie_gen_max", nvml.nvmlDeviceGetMaxPcieLinkGeneration),
            (GPU_PCIE_LINK_WIDTH, "pcie_width", nvml.nvmlDeviceGetCurrPcieLinkWidth),
            (GPU_PCIE_LINK_WIDTH_MAX, "pcie_width_max", nvml.nvmlDeviceGetMaxPcieLinkWidth),
        ):
            add(name, metric, fn, h, doc="PCIe link generation or width (lanes)")
        out += self._nvlink_counters(gpu, h, labels)
        out += self._processes(gpu, h, labels, pid_to_rank)
        return out

    def _gpm(self, gpu: int, h: Any, labels: tuple) -> list[Sample]:
        nvml = self.nvml
        try:
            sample = nvml.nvmlGpmSampleAlloc()
            nvml.nvmlGpmSampleGet(h, sample)
        except nvml.NVMLError_GpuIsLost:
            raise _Lost() from None
        except nvml.NVMLError:
            return []
        previous = self.gpm_previous.get(gpu)
        self.gpm_previous[gpu] = sample
        if previous is None:
            return []  # rates need two samples
        wanted: list[tuple[int, str, float]] = [
            (getattr(nvml, const), name, 0.01) for const, name in GPM_PERCENT.items()
        ]
        wanted += [
            (
                nvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC,
                "mrcdiag_gpu_pcie_transmit_bytes_per_second",
                float(MIB),
            ),
            (
                nvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC,
                "mrcdiag_gpu_pcie_receive_bytes_per_second",
                float(MIB),
            ),
        ]
        links = []
        for link in range(NVLINK_LINKS):
            for direction in ("TX", "RX"):
                const = getattr(nvml, f"NVML_GPM_METRIC_NVLINK_L{link}_{direction}_PER_SEC", None)
                if const is not None:
                    links.append((const, direction))
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(wanted) + len(links)
        request.sample1 = previous
        request.sample2 = sample
        for i, (metric_id, _, _) in enumerate(wanted):
            request.metrics[i].metricId = metric_id
        for j, (metric_id, _) in enumerate(links):
            request.metrics[len(wanted) + j].metricId = metric_id
        try:
            nvml.nvmlGpmMetricsGet(request)
        except nvml.NVMLError:
            return []
        finally:
            try:
                nvml.nvmlGpmSampleFree(previous)
            except nvml.NVMLError:
                pass
        out = []
        for i, (_, name, scale) in enumerate(wanted):
            metric = request.metrics[i]
            if metric.nvmlReturn == 0:
                out.append(Sample(name, metric.value * scale, labels, help="From GPM"))
        totals = {"TX": 0.0, "RX": 0.0}
        seen = False
        for j, (_, direction) in enumerate(links):
            metric = request.metrics[len(wanted) + j]
            if metric.nvmlReturn == 0:
                totals[direction] += metric.value * MIB
                seen = True
        if seen:
            out.append(
                Sample(
                    "mrcdiag_gpu_nvlink_transmit_bytes_per_second",
                    totals["TX"],
                    labels,
                    help="NVLink traffic sent, all links (GPM)",
                )
            )
            out.append(
                Sample(
                    "mrcdiag_gpu_nvlink_receive_bytes_per_second",
                    totals["RX"],
                    labels,
                    help="NVLink traffic received, all links (GPM)",
                )
            )
        return out

    def _nvlink_counters(self, gpu: int, h: Any, labels: tuple) -> list[Sample]:
        """NVLink byte counters from field values (pre-Hopper path; KiB in NVML)."""
        nvml = self.nvml
        if (gpu, "nvlink_fields") in self.unsupported:
            return []
        fields = [
            nvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
            nvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
        ]
        try:
            values = self._get(gpu, "nvlink_fields", nvml.nvmlDeviceGetFieldValues, h, fields)
        except _Unsupported:
            return []
        except nvml.NVMLError:
            return []
        out = []
        for value, name in zip(values, ("transmit", "receive"), strict=True):
            if getattr(value, "nvmlReturn", 0) != 0:
                continue
            out.append(
                Sample(
                    f"mrcdiag_gpu_nvlink_{name}_bytes_total",
                    float(value.value.ullVal) * 1024,
                    labels,
                    "counter",
                    f"NVLink data {name}, all links",
                )
            )
        if not out:
            self.unsupported.add((gpu, "nvlink_fields"))
        return out

    def _processes(self, gpu: int, h: Any, labels: tuple, pid_to_rank: dict) -> list[Sample]:
        nvml = self.nvml
        fn = getattr(nvml, "nvmlDeviceGetComputeRunningProcesses", None)
        if fn is None:
            return []
        try:
            processes = self._get(gpu, "processes", fn, h)
        except (_Unsupported, nvml.NVMLError):
            return []
        out = []
        for proc in processes:
            if proc.pid in pid_to_rank:
                rank, local = pid_to_rank[proc.pid]
                out.append(
                    Sample(
                        "mrcdiag_gpu_rank_info",
                        1.0,
                        labels
                        + (("rank", str(rank)), ("local_rank", str(local)), ("pid", str(proc.pid))),
                        help="Which rank's process runs on this GPU",
                    )
                )
        return out

    def _drain_xid_events(self) -> None:
        nvml = self.nvml
        if self.event_set is None:
            return
        for _ in range(64):  # bounded: never stall the scrape
            try:
                data = nvml.nvmlEventSetWait_v2(self.event_set, 0)
            except nvml.NVMLError:  # Timeout: nothing pending
                return
            try:
                gpu = next(i for i, h in enumerate(self.handles) if h == data.device)
            except StopIteration:
                gpu = -1
            key = (gpu, int(data.eventData))
            self.xid_counts[key] = self.xid_counts.get(key, 0) + 1


def create(
    common: dict[str, str], rank_processes: Callable[[], list[RankProcess]] = list, nvml: Any = None
) -> NvmlCollector | None:
    """An NVML collector, or None (with one info line) where there is no NVIDIA driver."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            warn_once("no-nvml", "nvidia-ml-py is not installed: no NVIDIA GPU metrics")
            return None
    try:
        collector = NvmlCollector(common, nvml, rank_processes)
    except nvml.NVMLError as exc:
        warn_once("no-nvml", f"no NVIDIA GPU metrics on this node (NVML: {exc})")
        return None
    return collector if collector.count else None
