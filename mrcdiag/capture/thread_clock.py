"""The calling thread's own clocks: how long it ran on a CPU and how long it waited in a
run queue for one (Linux schedstat), read at each step boundary by the training thread.

Over a step, wall time minus these and minus the waits the step tracker sees (collectives,
DataLoader) is time the thread was off the CPU without asking for it back: stopped from
outside (SIGSTOP, a hypervisor), or asleep. These split a rank's lateness into its own
work (CPU), contention for a CPU (run-queue wait) and neither, over exactly the steps in
which it was late, which rates sampled by the node agent over the whole run cannot."""

from __future__ import annotations

import os
import threading
import time

_SCHEDSTAT = "/proc/thread-self/schedstat"
UNKNOWN = -1


class ThreadClock:
    """`read()` -> (ns on a CPU, ns waiting in a run queue or UNKNOWN) of the calling
    thread. The schedstat file stays open for the thread that opened it (a pread of it
    costs about 2 us); a call from another thread or process opens that one's."""

    def __init__(self) -> None:
        self._owner: tuple[int, int] | None = None
        self._fd = -1
        self._schedstat = True

    def read(self) -> tuple[int, int]:
        if self._schedstat:
            try:
                owner = (os.getpid(), threading.get_ident())
                if owner != self._owner:
                    self._reopen(owner)
                on_cpu, run_delay, _ = os.pread(self._fd, 128, 0).split()
                return int(on_cpu), int(run_delay)
            except (OSError, ValueError):  # no /proc, or no schedstats in this kernel
                self._schedstat = False
        return time.thread_time_ns(), UNKNOWN

    def _reopen(self, owner: tuple[int, int]) -> None:
        if self._fd >= 0 and self._owner is not None and self._owner[0] == owner[0]:
            os.close(self._fd)  # a forked child leaves its parent's descriptor alone
        self._fd = os.open(_SCHEDSTAT, os.O_RDONLY | os.O_CLOEXEC)
        self._owner = owner
