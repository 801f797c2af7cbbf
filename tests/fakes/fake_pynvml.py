"""A fake `pynvml` that answers like nvidia-ml-py: same names, same ctypes structs, same
exceptions (taken from the real module, which imports without a driver). Only the calls
into libnvidia-ml are replaced, by answers from a table of fake GPUs."""

from __future__ import annotations

import ctypes
import types
from dataclasses import dataclass, field

import pynvml as real


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    util_gpu: int = 90
    util_memory: int = 40
    mem_used: int = 30 << 30
    mem_total: int = 80 << 30
    sm_clock_mhz: int = 1980
    sm_clock_max_mhz: int = 1980
    clock_reasons: int = 0
    power_mw: int = 650_000
    power_limit_mw: int = 700_000
    temperature_c: int = 60
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    pcie_tx_kbs: int = 1000
    pcie_rx_kbs: int = 2000
    nvlink_tx_kib: int = 5_000_000
    nvlink_rx_kib: int = 6_000_000
    gpm: bool = True
    gpm_dram_bw_util: float = 55.0
    gpm_sm_util: float = 80.0
    gpm_tensor_util: float = 70.0
    gpm_pcie_tx_mibs: float = 100.0
    gpm_nvlink_tx_mibs_per_link: float = 1000.0
    pids: list[int] = field(default_factory=list)
    unsupported: set[str] = field(default_factory=set)
    lost: bool = False
    # how it is wired (collectors/topology.py)
    bus_id: str = ""  # "" : 00000000:<index+0x18>:00.0
    pcie_gen: int = 5
    pcie_gen_max: int = 5
    pcie_width: int = 16
    pcie_width_max: int = 16
    numa_node: int = 0
    cpus: list[int] = field(default_factory=lambda: list(range(0, 32)))
    # link -> the GPU index it reaches, or "switch" (an NVSwitch); other links inactive
    nvlinks: dict[int, int | str] = field(default_factory=dict)


@dataclass
class FakeWiring:
    """Between GPUs: NVML's topology level of their common ancestor (10 PIX, 20 PXB, 30
    PHB, 40 NODE, 50 SYS), and the P2P read status (0 ok, 5 not supported, ...)."""

    level: int = 10
    p2p: int = 0
    levels: dict[tuple[int, int], int] = field(default_factory=dict)
    p2ps: dict[tuple[int, int], int] = field(default_factory=dict)


class _Handle:
    def __init__(self, index: int) -> None:
        self.index = index


def make_fake_nvml(
    gpus: list[FakeGpu], library_missing: bool = False, wiring: FakeWiring | None = None
) -> types.ModuleType:
    m = types.ModuleType("pynvml")
    for name in dir(real):  # constants, exception classes, ctypes structs
        if (
            not name.startswith("nvml")
            or name.startswith("nvmlClocks")
            or name.startswith("nvmlEventType")
        ):
            setattr(m, name, getattr(real, name))
    handles = [_Handle(i) for i in range(len(gpus))]
    events: list[tuple[int, int]] = []
    samples: dict[int, int] = {}  # address of a GPM sample -> gpu

    def gpu(handle: _Handle, what: str) -> FakeGpu:
        g = gpus[handle.index]
        if g.lost:
            raise real.NVMLError_GpuIsLost()
        if what in g.unsupported:
            raise real.NVMLError_NotSupported()
        return g

    def nvmlInit() -> None:
        if library_missing:
            raise real.NVMLError_LibraryNotFound()

    m.nvmlInit = nvmlInit
    m.nvmlShutdown = lambda: None
    m.nvmlDeviceGetCount = lambda: len(gpus)
    m.nvmlDeviceGetHandleByIndex = lambda i: handles[i]
    m.nvmlDeviceGetName = lambda h: gpus[h.index].name
    m.nvmlDeviceGetUUID = lambda h: f"GPU-fake-{h.index:04d}"
    m.nvmlDeviceGetUtilizationRates = lambda h: real.c_nvmlUtilization_t(
        gpu(h, "utilization").util_gpu, gpu(h, "utilization").util_memory
    )

    def memory(h: _Handle) -> types.SimpleNamespace:
        g = gpu(h, "memory")
        return types.SimpleNamespace(
            used=g.mem_used, total=g.mem_total, free=g.mem_total - g.mem_used
        )

    m.nvmlDeviceGetMemoryInfo = memory

    def clock(h: _Handle, kind: int) -> int:
        assert kind == real.NVML_CLOCK_SM
        return gpu(h, "sm_clock").sm_clock_mhz

    m.nvmlDeviceGetClockInfo = clock
    m.nvmlDeviceGetMaxClockInfo = lambda h, kind: gpu(h, "sm_clock_max").sm_clock_max_mhz
    m.nvmlDeviceGetCurrentClocksEventReasons = lambda h: gpu(h, "clock_events").clock_reasons
    m.nvmlDeviceGetPowerUsage = lambda h: gpu(h, "power").power_mw
    m.nvmlDeviceGetEnforcedPowerLimit = lambda h: gpu(h, "power_limit").power_limit_mw
    m.nvmlDeviceGetTemperature = lambda h, sensor: gpu(h, "temperature").temperature_c

    def ecc(h: _Handle, error_type: int, counter: int) -> int:
        g = gpu(h, "ecc")
        assert counter == real.NVML_VOLATILE_ECC
        if error_type == real.NVML_MEMORY_ERROR_TYPE_CORRECTED:
            return g.ecc_corrected
        return g.ecc_uncorrected

    m.nvmlDeviceGetTotalEccErrors = ecc

    def pcie(h: _Handle, counter: int) -> int:
        g = gpu(h, "pcie")
        return g.pcie_tx_kbs if counter == real.NVML_PCIE_UTIL_TX_BYTES else g.pcie_rx_kbs

    m.nvmlDeviceGetPcieThroughput = pcie

    def field_values(h: _Handle, ids: list[int]) -> ctypes.Array:
        g = gpu(h, "nvlink_fields")
        values = (real.c_nvmlFieldValue_t * len(ids))()
        for i, fid in enumerate(ids):
            values[i].fieldId = fid
            values[i].nvmlReturn = 0
            values[i].value.ullVal = (
                g.nvlink_tx_kib
                if fid == real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX
                else g.nvlink_rx_kib
            )
        return values

    m.nvmlDeviceGetFieldValues = field_values
    m.nvmlDeviceGetComputeRunningProcesses = lambda h: [
        types.SimpleNamespace(pid=p, usedGpuMemory=1 << 30) for p in gpu(h, "processes").pids
    ]

    def gpm_support(h: _Handle) -> object:
        s = real.c_nvmlGpmSupport_t()
        s.isSupportedDevice = int(gpus[h.index].gpm)
        return s

    m.nvmlGpmQueryDeviceSupport = gpm_support

    def sample_alloc() -> object:
        return ctypes.pointer(real.struct_c_nvmlGpmSample_t())

    def sample_get(h: _Handle, sample: object) -> object:
        gpu(h, "gpm")
        samples[ctypes.addressof(sample.contents)] = h.index
        return sample

    m.nvmlGpmSampleAlloc = sample_alloc
    m.nvmlGpmSampleGet = sample_get
    m.nvmlGpmSampleFree = lambda sample: None

    def metrics_get(request: object) -> object:
        g = gpus[samples[ctypes.addressof(request.sample2.contents)]]
        table = {
            real.NVML_GPM_METRIC_DRAM_BW_UTIL: g.gpm_dram_bw_util,
            real.NVML_GPM_METRIC_SM_UTIL: g.gpm_sm_util,
            real.NVML_GPM_METRIC_ANY_TENSOR_UTIL: g.gpm_tensor_util,
            real.NVML_GPM_METRIC_PCIE_TX_PER_SEC: g.gpm_pcie_tx_mibs,
            real.NVML_GPM_METRIC_PCIE_RX_PER_SEC: g.gpm_pcie_tx_mibs,
        }
        for link in range(18):
            for d in ("TX", "RX"):
                const = getattr(real, f"NVML_GPM_METRIC_NVLINK_L{link}_{d}_PER_SEC", None)
                if const is not None:
                    table[const] = g.gpm_nvlink_tx_mibs_per_link if link < 4 else 0.0
        for i in range(request.numMetrics):
            metric = request.metrics[i]
            if metric.metricId in table:
                metric.value, metric.nvmlReturn = table[metric.metricId], 0
            else:
                metric.nvmlReturn = real.NVML_ERROR_NOT_SUPPORTED
        return request

    m.nvmlGpmMetricsGet = metrics_get
    m.nvmlEventSetCreate = lambda: object()
    m.nvmlDeviceRegisterEvents = lambda h, kinds, event_set: None

    def event_wait(event_set: object, timeout_ms: int) -> object:
        if not events:
            raise real.NVMLError_Timeout()
        index, xid = events.pop(0)
        return types.SimpleNamespace(
            device=handles[index], eventData=xid, eventType=real.nvmlEventTypeXidCriticalError
        )

    m.nvmlEventSetWait_v2 = event_wait
    m.nvmlEventTypeXidCriticalError = real.nvmlEventTypeXidCriticalError
    _wire(m, gpus, handles, gpu, wiring or FakeWiring())
    m.fake_events = events  # tests push (gpu, xid) here
    m.fake_gpus = gpus
    return m


def _bus(g: FakeGpu, index: int) -> str:
    return g.bus_id or f"00000000:{0x18 + index:02X}:00.0"


def _wire(m: types.ModuleType, gpus: list[FakeGpu], handles: list, gpu, wiring: FakeWiring) -> None:
    """The topology calls, as nvidia-ml-py makes them (same names and return shapes)."""

    def pci_info(h: _Handle) -> object:
        info = real.nvmlPciInfo_t()
        info.busId = _bus(gpus[h.index], h.index).encode()
        return info

    m.nvmlDeviceGetPciInfo = pci_info
    m.nvmlDeviceGetCurrPcieLinkGeneration = lambda h: gpu(h, "pcie_link").pcie_gen
    m.nvmlDeviceGetMaxPcieLinkGeneration = lambda h: gpu(h, "pcie_link").pcie_gen_max
    m.nvmlDeviceGetCurrPcieLinkWidth = lambda h: gpu(h, "pcie_link").pcie_width
    m.nvmlDeviceGetMaxPcieLinkWidth = lambda h: gpu(h, "pcie_link").pcie_width_max
    m.nvmlDeviceGetNumaNodeId = lambda h: gpu(h, "numa").numa_node

    def cpu_affinity(h: _Handle, size: int) -> ctypes.Array:
        words = (ctypes.c_ulonglong * size)()
        for cpu in gpu(h, "affinity").cpus:
            words[cpu // 64] |= 1 << (cpu % 64)
        return words

    m.nvmlDeviceGetCpuAffinity = cpu_affinity

    def link_target(h: _Handle, link: int) -> int | str:
        g = gpu(h, "nvlink")
        if link >= real.NVML_NVLINK_MAX_LINKS:
            raise real.NVMLError_InvalidArgument()
        if link not in g.nvlinks:
            raise real.NVMLError_NotSupported()
        return g.nvlinks[link]

    m.nvmlDeviceGetNvLinkState = lambda h, link: 1 if link_target(h, link) is not None else 0
    m.nvmlDeviceGetNvLinkRemoteDeviceType = lambda h, link: (
        real.NVML_NVLINK_DEVICE_TYPE_SWITCH
        if link_target(h, link) == "switch"
        else real.NVML_NVLINK_DEVICE_TYPE_GPU
    )

    def remote_pci(h: _Handle, link: int) -> object:
        target = link_target(h, link)
        info = real.nvmlPciInfo_t()
        info.busId = (
            b"00000000:C0:00.0" if target == "switch" else _bus(gpus[target], target).encode()
        )
        return info

    m.nvmlDeviceGetNvLinkRemotePciInfo = remote_pci

    def pair(a: _Handle, b: _Handle) -> tuple[int, int]:
        return (min(a.index, b.index), max(a.index, b.index))

    m.nvmlDeviceGetTopologyCommonAncestor = lambda a, b: wiring.levels.get(pair(a, b), wiring.level)

    def p2p_status(a: _Handle, b: _Handle, index: int) -> int:
        if not isinstance(index, int):  # what ctypes refuses in the real call
            raise ctypes.ArgumentError(f"argument 3: wrong type {type(index).__name__}")
        return wiring.p2ps.get(pair(a, b), wiring.p2p)

    m.nvmlDeviceGetP2PStatus = p2p_status
