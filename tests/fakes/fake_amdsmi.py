"""A fake `amdsmi`: the calls, enums and exception the collector uses, answering like the
library for a list of fake GPUs (including ERR_NOT_SUPPORTED)."""

from __future__ import annotations

import enum
import types


class AmdSmiRetCode(enum.IntEnum):
    SUCCESS = 0
    ERR_NOT_SUPPORTED = 2
    ERR_NO_PERM = 10


class AmdSmiLibraryException(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"amdsmi error {code}")
        self.err_code = code

    def get_error_code(self) -> int:
        return self.err_code


def make_fake_amdsmi(gpus: list[dict], init_fails: bool = False) -> types.ModuleType:
    m = types.ModuleType("amdsmi")
    m.AmdSmiRetCode = AmdSmiRetCode
    m.AmdSmiLibraryException = AmdSmiLibraryException
    m.AmdSmiInitFlags = types.SimpleNamespace(INIT_AMD_GPUS=2)
    m.AmdSmiClkType = types.SimpleNamespace(GFX=0, MEM=1)
    m.AmdSmiTemperatureType = types.SimpleNamespace(EDGE=0, HOTSPOT=1)
    m.AmdSmiTemperatureMetric = types.SimpleNamespace(CURRENT=0)

    def init(flags: int) -> None:
        if init_fails:
            raise AmdSmiLibraryException(AmdSmiRetCode.ERR_NO_PERM)

    def field(name: str):
        def get(h: int, *args: object) -> object:
            g = gpus[h]
            if name in g.get("unsupported", ()):
                raise AmdSmiLibraryException(AmdSmiRetCode.ERR_NOT_SUPPORTED)
            return g[name]

        return get

    m.amdsmi_init = init
    m.amdsmi_get_processor_handles = lambda: list(range(len(gpus)))
    for name in (
        "activity",
        "vram_usage",
        "power_info",
        "total_ecc_count",
        "pci_throughput",
        "metrics_info",
    ):
        setattr(m, f"amdsmi_get_gpu_{name}", field(name))
    m.amdsmi_get_power_info = field("power_info")
    m.amdsmi_get_clock_info = field("clock_info")
    m.amdsmi_get_temp_metric = field("temperature")
    # how they are wired (collectors/topology.py), as amdsmi 7 answers
    m.amdsmi_get_pcie_info = field("pcie_info")
    m.amdsmi_get_gpu_device_bdf = lambda h: f"0000:{0x10 + 0x10 * h:02x}:00.0"
    m.amdsmi_topo_get_numa_node_number = field("numa_node")
    m.amdsmi_get_gpu_asic_info = field("asic_info")

    def link_type(src: int, dst: int) -> dict:
        link = (gpus[src].get("links") or {}).get(dst, ("xgmi", 1))
        return {"hops": link[1], "type": 2 if link[0] == "xgmi" else 1}

    m.amdsmi_topo_get_link_type = link_type
    m.amdsmi_is_P2P_accessible = lambda src, dst: dst not in gpus[src].get("no_p2p", ())
    return m


def mi300(**overrides: object) -> dict:
    gpu = {
        "activity": {"gfx_activity": 85, "umc_activity": 35, "mm_activity": 0},
        "vram_usage": {"vram_used": 4096, "vram_total": 196608},
        "clock_info": {"clk": 2100, "max_clk": 2100, "min_clk": 500},
        "power_info": {"current_socket_power": 600, "power_limit": 750},
        "temperature": 55,
        "total_ecc_count": {"correctable_count": 1, "uncorrectable_count": 0},
        "pci_throughput": {"sent": 1000, "received": 2000, "max_pkt_sz": 256},
        "metrics_info": {
            "xgmi_read_data_acc": [10, 20, 0, 0],
            "xgmi_write_data_acc": [5, 5, 0, 0],
            "throttle_status": 0,
        },
        "unsupported": set(),
        "pcie_info": {
            "pcie_static": {"max_pcie_width": 16, "max_pcie_speed": 32, "slot_type": "OAM"},
            "pcie_metric": {"pcie_width": 16, "pcie_speed": 32000, "pcie_bandwidth": 0},
        },
        "numa_node": 0,
        "asic_info": {"market_name": "AMD Instinct MI300X"},
    }
    gpu.update(overrides)
    return gpu
