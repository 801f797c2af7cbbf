"""The rank's device memory at step boundaries: PyTorch's caching allocator, as the
allocator itself counts it (`torch.cuda.memory_stats`, which ROCm builds answer too).

Read once per step, never per collective, and only where the job itself has set up
CUDA (`torch.cuda.is_initialized()`): reading must not create a CUDA context in a CPU
job. `num_alloc_retries` counts the times an allocation failed, the allocator freed its
cached blocks (synchronizing the device) and tried again: each is a stall. Any failure
turns the reading off for the rest of the run, once said.
"""

from __future__ import annotations

import sys
from typing import Any

from mrcdiag.log import warn_once

UNKNOWN = -1
NOT_KNOWN = (UNKNOWN,) * 6  # allocated, reserved, peak reserved, retries, ooms, total


class DeviceMemory:
    def __init__(self) -> None:
        self._off = False
        self._total: dict[int, int] = {}

    def read(self) -> tuple[int, ...]:
        """(allocated, reserved, peak reserved, alloc retries, OOMs, device total) bytes
        and counts; NOT_KNOWN without a device in use."""
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
                int(stats.get("reserved_bytes.all.peak", UNKNOWN)),
                int(stats.get("num_alloc_retries", UNKNOWN)),
                int(stats.get("num_ooms", UNKNOWN)),
                total,
            )
        except Exception as exc:  # the job goes on without these figures
            self._off = True
            warn_once("device-memory", f"cannot read the device's memory ({exc!r}); not again")
            return NOT_KNOWN
