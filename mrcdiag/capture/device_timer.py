"""Collective times on the GPU: CUDA events on the stream the collective is ordered on.

Why: with NCCL the host call returns as soon as the kernel is queued, so host time says
when the CPU got there, not when the GPU did; a rank whose GPU is behind looks punctual
on the host. So for CUDA tensors two events bracket the collective on the caller's
current stream: one recorded just before the call (the stream reaches it when the work
before it is done on the device: the device arrival) and one after it, once the current
stream is ordered after the collective (after a synchronous call, whose work makes the
current stream wait for NCCL's; after `Work.wait()`; or inside the work's completion
callback, where torch sets the current stream to one that waits for the result).

Off the hot path: the training thread only records events (taken from a pool) and
queues them. The writer thread asks `query()` (never a synchronize), and converts event
times to the host's CLOCK_MONOTONIC through an anchor event recorded on an idle stream
and synchronized there, renewed every ANCHOR_RENEW_NS to follow the drift between the
GPU's timer and the host clock. Records whose events never complete (a hung GPU, the
process ending) are written with their host times, so nothing recorded is lost.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from mrcdiag.store.schema import CollectiveRow

ANCHOR_RENEW_NS = 30_000_000_000
_ARRIVE = CollectiveRow.T_ARRIVE_NS
_END = CollectiveRow.T_END_NS


class _Anchor:
    """A device event whose host time is known to within half the synchronize time."""

    def __init__(self, cuda: Any, device: int, stream: Any) -> None:
        self.event = cuda.Event(enable_timing=True)
        before = time.monotonic_ns()
        self.event.record(stream)
        self.event.synchronize()
        after = time.monotonic_ns()
        self.host_ns = (before + after) // 2
        self.uncertainty_ns = (after - before) // 2
        self.made_ns = after

    def host_time(self, event: Any) -> int:
        return self.host_ns + round(self.event.elapsed_time(event) * 1e6)


class DeviceTimer:
    """Brackets collectives on CUDA tensors with events; resolves them off the hot path."""

    def __init__(
        self, cuda: Any, raw_stream: Callable[[int], int] | None = None, capacity: int = 1 << 16
    ) -> None:
        self.cuda = cuda
        # `cuda.current_stream()` builds a new Stream object per call (a few us, twice per
        # collective); the raw handle of the current stream is one C call, and names the
        # same stream for as long as it is current, so its Stream object is kept.
        self.raw_stream = raw_stream
        self._streams: dict[int, Any] = {}  # raw cudaStream_t -> its Stream
        self.capacity = capacity
        self.queued: deque[tuple] = deque()  # (row, start event, end event, device)
        self.dropped = 0
        self._pool: deque[Any] = deque()
        self._anchors: dict[int, _Anchor] = {}
        self._idle_streams: dict[int, Any] = {}

    # --- training thread --------------------------------------------------------------
    # Twice per collective: kept to pool pops, one C call for the stream, one dict lookup
    # and the event's record (see benchmarks/cuda_hot_path.py).
    def start(self, device: int) -> Any:
        """Record the device arrival on the current stream of `device`."""
        try:  # completion callbacks may call finish() on another thread: pop, not check
            event = self._pool.pop()
        except IndexError:
            event = self.cuda.Event(enable_timing=True)
        raw_stream = self.raw_stream
        stream = None if raw_stream is None else self._streams.get(raw_stream(device))
        event.record(self._stream_of(device) if stream is None else stream)
        return event

    def finish(self, row: tuple, start: Any, device: int) -> None:
        """Record the device completion; `row` is the full record with its host times."""
        pool = self._pool
        if len(self.queued) >= self.capacity:
            self.dropped += 1
            pool.append(start)
            return
        try:
            end = pool.pop()
        except IndexError:
            end = self.cuda.Event(enable_timing=True)
        raw_stream = self.raw_stream
        stream = None if raw_stream is None else self._streams.get(raw_stream(device))
        end.record(self._stream_of(device) if stream is None else stream)
        self.queued.append((row, start, end, device))

    def _stream_of(self, device: int) -> Any:
        """The current stream of `device`, kept under its raw handle for the next call."""
        stream = self.cuda.current_stream(device)
        if self.raw_stream is not None:
            self._streams[self.raw_stream(device)] = stream
        return stream

    # --- writer thread ----------------------------------------------------------------
    def resolve(self, out: list[tuple], final: bool = False) -> None:
        """Append to `out` the rows whose events have completed, in order, with device
        times on the host clock; with `final`, the rest too, with their host times. A row
        leaves the queue only once it is in `out`, so an error loses none."""
        queued = self.queued
        pool = self._pool
        anchors: dict[int, _Anchor] = {}
        while queued:
            row, start, end, device = queued[0]
            if not end.query():
                break
            anchor = anchors.get(device)
            if anchor is None:
                anchor = anchors[device] = self._anchor(device)
            arrive, done = anchor.host_time(start), anchor.host_time(end)
            if 0 < arrive <= done:
                row = row[:_ARRIVE] + (arrive, done) + row[_END + 1 :]
            # else a clock we cannot trust: the row keeps the host's view
            out.append(row)
            queued.popleft()
            pool.append(start)
            pool.append(end)
        if final:
            out.extend(entry[0] for entry in self.take_all())

    def take_all(self) -> list[tuple]:
        """Everything still queued, resolved or not: (row, start, end, device)."""
        return [self.queued.popleft() for _ in range(len(self.queued))]

    def _anchor(self, device: int) -> _Anchor:
        anchor = self._anchors.get(device)
        if anchor is None or time.monotonic_ns() - anchor.made_ns > ANCHOR_RENEW_NS:
            stream = self._idle_streams.get(device)
            if stream is None:
                stream = self._idle_streams[device] = self.cuda.Stream(device=device)
            anchor = self._anchors[device] = _Anchor(self.cuda, device, stream)
        return anchor


def device_timer_for(torch: Any) -> DeviceTimer | None:
    """A timer when this process can use CUDA; None on CPU-only machines and builds, and
    with MRCDIAG_DEVICE_TIMING=0: a job issuing many thousands of small collectives per
    second may trade the device's view (CUDA collectives then get the host's times, when
    the kernel was queued) for the two event records per collective."""
    if os.environ.get("MRCDIAG_DEVICE_TIMING", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        if torch.cuda.is_available():
            return DeviceTimer(torch.cuda, getattr(torch._C, "_cuda_getCurrentRawStream", None))
    except Exception:  # a broken CUDA setup: host times only
        return None
    return None
