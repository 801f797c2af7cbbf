"""Where steps begin and end, and what each step spent waiting.

A step ends at each `optimizer.step()` of the first optimizer that steps (found through
torch's global optimizer hook, so the user's script needs no change), or at the end of
each `with mrcdiag.step():` block once the user marks steps by hand; marking by hand
turns the automatic detection off.
"""

from __future__ import annotations

import time
from typing import Any

from mrcdiag.capture.cgroup_cpu import CgroupThrottle
from mrcdiag.capture.device_memory import DeviceMemory
from mrcdiag.capture.recorder import Recorder
from mrcdiag.capture.thread_clock import UNKNOWN, ThreadClock
from mrcdiag.store import records

_now = time.monotonic_ns  # the clock every record of the run uses


class StepTracker:
    """Accumulates the current step's data wait and blocked communication time."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.index = 0
        self.t_start_ns = _now()
        self.data_wait_ns = 0
        self.comm_ns = 0
        self.n_collectives = 0
        self.clock = ThreadClock()
        self.throttle = CgroupThrottle()
        self.memory = DeviceMemory()
        self.cpu_ns, self.cpu_wait_ns = self.clock.read()
        self.throttle.since_last()
        self.manual = False
        self.in_manual_step = False
        self._optimizer_id: int | None = None

    def _close(self, t_end_ns: int) -> None:
        cpu_ns, cpu_wait_ns = self.clock.read()
        self.recorder.add_step(
            (
                self.index,
                self.t_start_ns,
                t_end_ns,
                self.data_wait_ns,
                self.comm_ns,
                self.n_collectives,
                cpu_ns - self.cpu_ns,
                UNKNOWN
                if UNKNOWN in (cpu_wait_ns, self.cpu_wait_ns)
                else cpu_wait_ns - self.cpu_wait_ns,
                self.throttle.since_last(),
                *self.memory.read(),
            )
        )
        device = self.memory.describe_once()
        if device is not None:
            self.recorder.event(records.EVENT_DEVICE, **device)
        self.index += 1
        self._reset(t_end_ns, (cpu_ns, cpu_wait_ns))

    def _reset(self, t_start_ns: int, clocks: tuple[int, int] | None = None) -> None:
        self.t_start_ns = t_start_ns
        if clocks is None:
            clocks = self.clock.read()
            self.throttle.since_last()  # a step begun by hand counts from here
        self.cpu_ns, self.cpu_wait_ns = clocks
        self.data_wait_ns = 0
        self.comm_ns = 0
        self.n_collectives = 0

    def on_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.manual:
            return
        if self._optimizer_id is None:
            self._optimizer_id = id(optimizer)
        elif id(optimizer) != self._optimizer_id:
            return  # a second optimizer in the same iteration is not a new step
        self._close(_now())

    def begin_manual(self) -> None:
        self.manual = True
        self.in_manual_step = True
        self._reset(_now())

    def end_manual(self) -> None:
        self.in_manual_step = False
        self._close(_now())
