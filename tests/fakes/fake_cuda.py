"""A fake of the few `torch.cuda` calls the device timer makes, answering like torch does.

Each stream is `delay_ms` behind the host: an event recorded on it at host time h gets
the device timestamp h + delay (on a GPU timer with its own origin, DEVICE_ORIGIN_MS),
and is complete at once, or, while the stream is `held` (a GPU still busy, or hung),
only when the test calls `release()`. `elapsed_time` refuses incomplete events with the
error torch raises; `synchronize` on a held stream would hang on a real GPU, here it
raises so that a test cannot hang.
"""

from __future__ import annotations

import time
from typing import Any

DEVICE_ORIGIN_MS = -987_654.321  # the GPU timer's zero is not the host's


class Stream:
    def __init__(self, device: int = 0, delay_ms: float = 0.0) -> None:
        self.device = device
        self.delay_ms = delay_ms
        self.held: list[Event] | None = None

    def hold(self) -> None:
        self.held = []

    def release(self) -> None:
        for event in self.held or []:
            event.done = True
        self.held = None


class Event:
    fail_elapsed: Exception | None = None  # set on the class to make every call fail

    def __init__(self, enable_timing: bool = False) -> None:
        self.enable_timing = enable_timing
        self.t_ms: float | None = None
        self.done = False

    def record(self, stream: Stream | None = None) -> None:
        stream = stream or _current[0]
        self.t_ms = time.monotonic_ns() / 1e6 + stream.delay_ms + DEVICE_ORIGIN_MS
        self.done = stream.held is None
        if stream.held is not None:
            stream.held.append(self)

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        if not self.done:
            raise AssertionError("a real GPU would block here forever")

    def elapsed_time(self, end: Event) -> float:
        if Event.fail_elapsed is not None:
            raise Event.fail_elapsed
        if not (self.enable_timing and end.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'")
        if not (self.done and end.done) or self.t_ms is None or end.t_ms is None:
            raise RuntimeError("Both events must be completed before calculating elapsed time.")
        return end.t_ms - self.t_ms


_current: dict[int, Stream] = {0: Stream(0)}


def current_stream(device: Any = None) -> Stream:
    return _current[int(device or 0)]


def raw_stream(device: int) -> int:
    """As torch._C._cuda_getCurrentRawStream: the current stream's handle."""
    return id(_current[int(device)])


def set_current_stream(stream: Stream) -> None:
    _current[stream.device] = stream


def is_available() -> bool:
    return True


class FakeCudaTensor:
    """What the hook reads of a CUDA tensor: size, dtype, and where it lives."""

    is_cuda = True

    def __init__(self, numel: int, device: int = 0) -> None:
        import torch

        self._numel = numel
        self.dtype = torch.float32
        self.device = torch.device("cuda", device)

    def numel(self) -> int:
        return self._numel

    def element_size(self) -> int:
        return 4

    @property
    def nbytes(self) -> int:
        return self._numel * 4
