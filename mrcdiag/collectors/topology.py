"""How a node's GPUs are wired, read once from NVML (in the spirit of `nvidia-smi topo -m`).

For every pair of GPUs: the path between them (NVLink with its active link count, or the
PCIe level of their common ancestor: same switch, several bridges, the host bridge, the
same NUMA node, across sockets) and whether peer-to-peer reads work, with NVML's reason
where not. For each GPU: its PCIe link generation and width, current and maximum, its
NUMA node and the CPUs near it. Every call that a driver or GPU does not support leaves
its field None; the node agent writes the result once per run (nodes/HOST/topology.json)
and `mrcdiag topo` prints it.
"""

from __future__ import annotations

from typing import Any

# NVML's topology levels, as nvidia-smi topo -m names them
PATH_OF_LEVEL = {0: "BOARD", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}
PATH_MEANING = {
    "NV": "NVLink",
    "XGMI": "AMD Infinity Fabric (XGMI)",
    "PCIE": "PCIe (hops through switches and bridges)",
    "BOARD": "on the same board",
    "PIX": "through one PCIe switch",
    "PXB": "through several PCIe bridges, not the host bridge",
    "PHB": "through the CPU's PCIe host bridge",
    "NODE": "across host bridges within one NUMA node",
    "SYS": "across CPU sockets (the SMP interconnect)",
}
P2P_STATUS = {
    0: "ok",
    1: "chipset not supported",
    2: "GPU not supported",
    3: "IOH topology not supported",
    4: "disabled by regkey",
    5: "not supported",
    6: "unknown",
}


def _p2p_read_index(nvml: Any) -> int:
    # nvidia-ml-py defines NVML_P2P_CAPS_INDEX_READ as the tuple (0,) (a stray comma)
    value = getattr(nvml, "NVML_P2P_CAPS_INDEX_READ", 0)
    return int(value[0] if isinstance(value, tuple) else value)


def read_topology(nvml: Any) -> dict[str, Any]:
    """The node's GPUs and the paths between them; nvml must be initialized."""
    count = nvml.nvmlDeviceGetCount()
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]

    ask = _asker(nvml, nvml.NVMLError)
    bus = [_text(getattr(ask("nvmlDeviceGetPciInfo", h), "busId", b"")) for h in handles]
    gpus = []
    for i, h in enumerate(handles):
        gpus.append(
            {
                "index": i,
                "name": _text(ask("nvmlDeviceGetName", h) or ""),
                "bus_id": bus[i],
                "pcie_gen": ask("nvmlDeviceGetCurrPcieLinkGeneration", h),
                "pcie_gen_max": ask("nvmlDeviceGetMaxPcieLinkGeneration", h),
                "pcie_width": ask("nvmlDeviceGetCurrPcieLinkWidth", h),
                "pcie_width_max": ask("nvmlDeviceGetMaxPcieLinkWidth", h),
                "numa_node": ask("nvmlDeviceGetNumaNodeId", h),
                "cpus": _cpus(ask("nvmlDeviceGetCpuAffinity", h, CPU_SET_WORDS)),
            }
        )
    links = _nvlinks(nvml, handles, bus, ask)
    pairs = []
    read_index = _p2p_read_index(nvml)
    for i in range(count):
        for j in range(i + 1, count):
            level = ask("nvmlDeviceGetTopologyCommonAncestor", handles[i], handles[j])
            n_links = links.get((i, j), 0)
            status = ask("nvmlDeviceGetP2PStatus", handles[i], handles[j], read_index)
            pairs.append(
                {
                    "gpus": [i, j],
                    "path": f"NV{n_links}" if n_links else PATH_OF_LEVEL.get(level, "?"),
                    "nvlinks": n_links,
                    "p2p": P2P_STATUS.get(status, "unknown") if status is not None else None,
                }
            )
    return {"gpus": gpus, "pairs": pairs}


def _asker(library: Any, error: type[Exception]) -> Any:
    """ask(name, *args): the library's answer, or None where the call does not exist in
    this version or the driver or GPU does not support it."""

    def ask(fn_name: str, *args: Any) -> Any:
        fn = getattr(library, fn_name, None)
        if fn is None:
            return None
        try:
            return fn(*args)
        except error:
            return None

    return ask


CPU_SET_WORDS = 16  # 64-bit words of a CPU set: 1024 CPUs


def _cpus(mask: Any) -> list[int] | None:
    if mask is None:
        return None
    out = []
    for word, bits in enumerate(list(mask)):
        bits = int(bits)
        out += [word * 64 + b for b in range(64) if bits >> b & 1]
    return out


def _nvlinks(nvml: Any, handles: list[Any], bus: list[str], ask: Any) -> dict[tuple[int, int], int]:
    """Active NVLinks between each pair of GPUs. A link to another GPU is found by the
    link's remote PCI bus id; links to an NVSwitch reach every GPU on the switch fabric,
    so two switched GPUs are joined by as many links as the fewer of them has."""
    index_of = {b.lower(): i for i, b in enumerate(bus) if b}
    switch_type = int(getattr(nvml, "NVML_NVLINK_DEVICE_TYPE_SWITCH", 2))
    out: dict[tuple[int, int], int] = {}
    switched = [0] * len(handles)
    for i, h in enumerate(handles):
        for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))):
            if ask("nvmlDeviceGetNvLinkState", h, link) != 1:
                continue
            if ask("nvmlDeviceGetNvLinkRemoteDeviceType", h, link) == switch_type:
                switched[i] += 1
                continue
            remote = _text(getattr(ask("nvmlDeviceGetNvLinkRemotePciInfo", h, link), "busId", b""))
            j = index_of.get(remote.lower())
            if j is not None and j > i:
                out[(i, j)] = out.get((i, j), 0) + 1
    for i in range(len(handles)):
        for j in range(i + 1, len(handles)):
            if switched[i] and switched[j]:
                out[(i, j)] = out.get((i, j), 0) + min(switched[i], switched[j])
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def path_between(topology: dict[str, Any], a: int, b: int) -> dict[str, Any] | None:
    for pair in topology.get("pairs", []):
        if sorted(pair["gpus"]) == sorted((a, b)):
            return pair
    return None


def node_topology(nvml: Any = None) -> tuple[dict[str, Any] | None, str]:
    """(this node's topology, "") or (None, why there is none): nvidia-ml-py missing, no
    driver, no GPU."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return None, "nvidia-ml-py is not installed"
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return None, f"NVML: {exc}"
    try:
        topology = read_topology(nvml)
    except nvml.NVMLError as exc:
        return None, f"NVML: {exc}"
    if not topology["gpus"]:
        return None, "NVML sees no GPU"
    return topology, ""


# amdsmi_topo_get_link_type's link types (AMDSMI_LINK_TYPE_*)
AMD_LINK_PCIE, AMD_LINK_XGMI = 1, 2


def read_amd_topology(smi: Any) -> dict[str, Any]:
    """The same description from amdsmi where it has it: XGMI or PCIe (with its hop
    count) between each pair, peer-to-peer access, each GPU's PCIe link now and at most
    and its NUMA node. amdsmi must be initialized."""
    handles = list(smi.amdsmi_get_processor_handles())

    ask = _asker(smi, smi.AmdSmiLibraryException)
    gpus = []
    for i, h in enumerate(handles):
        pcie = ask("amdsmi_get_pcie_info", h) or {}
        now, static = pcie.get("pcie_metric") or {}, pcie.get("pcie_static") or {}
        gpus.append(
            {
                "index": i,
                "name": str((ask("amdsmi_get_gpu_asic_info", h) or {}).get("market_name", "")),
                "bus_id": str(ask("amdsmi_get_gpu_device_bdf", h) or ""),
                "pcie_gen": _generation(now.get("pcie_speed")),
                "pcie_gen_max": _generation(static.get("max_pcie_speed")),
                "pcie_width": _number(now.get("pcie_width")),
                "pcie_width_max": _number(static.get("max_pcie_width")),
                "numa_node": ask("amdsmi_topo_get_numa_node_number", h),
                "cpus": None,
            }
        )
    pairs = []
    for i in range(len(handles)):
        for j in range(i + 1, len(handles)):
            link = ask("amdsmi_topo_get_link_type", handles[i], handles[j]) or {}
            kind, hops = link.get("type"), link.get("hops")
            path = "XGMI" if kind == AMD_LINK_XGMI else "PCIE" if kind == AMD_LINK_PCIE else "?"
            accessible = ask("amdsmi_is_P2P_accessible", handles[i], handles[j])
            pairs.append(
                {
                    "gpus": [i, j],
                    "path": path,
                    "hops": hops,
                    "nvlinks": 0,
                    "p2p": None if accessible is None else "ok" if accessible else "not accessible",
                }
            )
    return {"gpus": gpus, "pairs": pairs}


def _number(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _generation(speed: Any) -> int | None:
    """A PCIe generation from a transfer rate, in MT/s (the current rate) or GT/s (the
    maximum, in amdsmi 7)."""
    rate = _number(speed)
    if rate is None or rate <= 0:
        return None
    gts = rate / 1000 if rate >= 1000 else rate
    return {2.5: 1, 5: 2, 8: 3, 16: 4, 32: 5, 64: 6}.get(gts) or min(
        (1, 2, 3, 4, 5, 6), key=lambda g: abs([2.5, 5, 8, 16, 32, 64][g - 1] - gts)
    )


def amd_node_topology(smi: Any = None) -> tuple[dict[str, Any] | None, str]:
    """(this node's topology from amdsmi, "") or (None, why not)."""
    if smi is None:
        try:
            import amdsmi as smi  # type: ignore[import-not-found]
        except ImportError:
            return None, "amdsmi is not installed"
    try:
        smi.amdsmi_init(smi.AmdSmiInitFlags.INIT_AMD_GPUS)
        topology = read_amd_topology(smi)
    except Exception as exc:  # amdsmi raises its own exception types
        return None, f"amdsmi: {exc}"
    if not topology["gpus"]:
        return None, "amdsmi sees no GPU"
    return topology, ""
