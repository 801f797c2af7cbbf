"""The rank's device memory at step boundaries: PyTorch's caching allocator, as the
allocator itself counts it (`torch.cuda.memory_stats`, which ROCm builds answer too).

Read once per step, never per collective, and only where the job itself has set up
CUDA (`torch.cuda.is_initialized()`): reading must not create a CUDA context in a CPU
job. `num_alloc_retries` counts the times an allocation failed, the allocator freed its
cached blocks (synchronizing the device) and tried again: each is a stall. Any failure
turns the reading off for the rest of the run, once said.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from mrcdiag.log import warn_once

UNKNOWN = -1
# allocated, reserved, peak allocated, peak reserved, retries, OOMs, device total
NOT_KNOWN = (UNKNOWN,) * 7
PCI_FIELDS = ("pci_domain_id", "pci_bus_id", "pci_device_id")  # torch's device properties


class DeviceMemory:
    def __init__(self) -> None:
        self._off = False
        self._total: dict[int, int] = {}
        self._described = False

    def describe_once(self) -> dict[str, Any] | None:
        """The first time a device is in use: which one (its index, PCI bus id as NVML
        writes it, name) and the CPUs this process may run on, for the topology checks
        (a rank pinned to the other socket's CPUs); None before and after."""
        if self._described or self._off:
            return None
        torch = sys.modules.get("torch")
        try:
            if torch is None or not torch.cuda.is_initialized():
                return None
            self._described = True
            device = torch.cuda.current_device()
            props = torch.cuda.get_device_properties(device)
            domain, bus, slot = (getattr(props, k, None) for k in PCI_FIELDS)
            bus_id = None if bus is None else f"{domain or 0:08X}:{bus:02X}:{slot or 0:02X}.0"
            return {
                "cuda_device": int(device),
                "pci_bus_id": bus_id,
                "device_name": str(getattr(props, "name", "")),
                "cpus": sorted(os.sched_getaffinity(0)),
            }
        except Exception as exc:
            warn_once("device-describe", f"cannot tell which device this rank uses ({exc!r})")
            return None

    def read(self) -> tuple[int, ...]:
        """(allocated, reserved, peak allocated, peak reserved, alloc retries, OOMs, device
        total) bytes and counts, as the step columns (schema.STEP_MEMORY_FIELDS) hold
        them; NOT_KNOWN without a device in use."""
        if self._off:
            return NOT_KNOWN
        torch = sys.modules.get("torch")
        try:
            if torch is None or not torch.cuda.is_initialized():
                return NOT_KNOWN
            device = torch.cuda.current_device()
            stats: dict[str, Any] = torch.cuda.memory_stats(device)
            total = self._total.get(device)
            if total is None:
                total = self._total[device] = int(
                    torch.cuda.get_device_properties(device).total_memory
                )
            return (
                int(stats.get("allocated_bytes.all.current", UNKNOWN)),
                int(stats.get("reserved_bytes.all.current", UNKNOWN)),
                int(stats.get("allocated_bytes.all.peak", UNKNOWN)),
                int(stats.get("reserved_bytes.all.peak", UNKNOWN)),
                int(stats.get("num_alloc_retries", UNKNOWN)),
                int(stats.get("num_ooms", UNKNOWN)),
                total,
            )
        except Exception as exc:  # the job goes on without these figures
            self._off = True
            warn_once("device-memory", f"cannot read the device's memory ({exc!r}); not again")
            return NOT_KNOWN
