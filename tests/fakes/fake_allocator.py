"""A fake of the caching-allocator queries of `torch.cuda` that mrcdiag reads at step
boundaries, answering like torch does, so that a CPU job exercises the memory path.

`torch.cuda.memory_stats(device)` returns a dict keyed like torch's
("allocated_bytes.all.current", "reserved_bytes.all.peak", "num_alloc_retries",
"num_ooms", ...); `get_device_properties(device).total_memory` the device's bytes;
`is_initialized()` True once installed, as in a job that has put tensors on its GPU.
`retry()` is what the allocator does when an allocation fails: it frees its cache and
counts a retry.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

GIB = 1 << 30


class FakeAllocator:
    def __init__(self, total_bytes: int = 24 * GIB, reserved_bytes: int = 18 * GIB) -> None:
        self.total_bytes = total_bytes
        self.reserved_bytes = reserved_bytes
        self.allocated_bytes = reserved_bytes - 2 * GIB
        self.peak_reserved_bytes = reserved_bytes
        self.retries = 0
        self.ooms = 0

    def retry(self) -> None:
        self.retries += 1
        self.peak_reserved_bytes = self.total_bytes - GIB // 4  # it had filled the device

    def memory_stats(self, device: Any = None) -> dict[str, int]:
        return {
            "active.all.current": 1200,
            "allocated_bytes.all.current": self.allocated_bytes,
            "allocated_bytes.all.peak": self.allocated_bytes + GIB,
            "reserved_bytes.all.current": self.reserved_bytes,
            "reserved_bytes.all.peak": self.peak_reserved_bytes,
            "num_alloc_retries": self.retries,
            "num_ooms": self.ooms,
            "num_sync_all_streams": 0,
        }

    def install(self, torch: Any) -> None:
        torch.cuda.is_initialized = lambda: True
        torch.cuda.current_device = lambda: 0
        torch.cuda.memory_stats = self.memory_stats
        torch.cuda.get_device_properties = lambda device=None: SimpleNamespace(
            name="Fake GPU",
            total_memory=self.total_bytes,
            pci_domain_id=0,
            pci_bus_id=0x18,  # as the fake NVML numbers GPU 0: 00000000:18:00.0
            pci_device_id=0,
        )
