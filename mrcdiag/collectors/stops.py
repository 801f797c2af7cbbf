"""How long each rank's process was stopped: SIGSTOP from a supervisor or a co-tenant's
tooling, a scheduler suspending it (Slurm's gang scheduling and preemption by suspend
send SIGSTOP and SIGCONT), job control.

A stopped process is seen from inside only by the gap it leaves: where it stopped inside
a collective (a CPU job on gloo, whose ranks move the data themselves), every rank
finishes that collective late together and none arrives late at the next one, so no
lateness points at it. The kernel keeps no count of stopped time, so a thread of the
node agent reads each rank's state (/proc/PID/stat, "T") many times a second and adds
the time between two readings that both saw it stopped, and half of that where one
did. A process stopped by a tracer (py-spy taking stacks: "t") is not counted.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

SAMPLE_INTERVAL_S = 0.1  # 10 readings a second per rank (0.3% of a core for 8 ranks)
STOPPED = "T"  # job-control stop; "t" is a tracer's
# Between two readings further apart than this (the agent itself held up), the time is
# not credited: a stop is only counted where it was seen around it.
MAX_CREDITED_GAP_S = 5 * SAMPLE_INTERVAL_S


def process_state(pid: int, proc_root: Path = Path("/proc")) -> str | None:
    """The one-letter state of `pid` (R, S, D, T, t, Z, ...); None if it is gone."""
    return _state_of(_read(f"{proc_root}/{pid}/stat"))


def _read(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return b""
    try:
        return os.read(fd, 512)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _state_of(text: bytes) -> str | None:
    # "pid (comm) S ...": comm may hold spaces and parentheses; the state follows the
    # last ")"
    end = text.rfind(b")")
    if end < 0 or end + 2 >= len(text):
        return None
    return chr(text[end + 2])


class StopWatch:
    """Seconds each watched process was seen stopped, since it was first seen. The
    processes are set by `watch` (the host collector, once a second); the thread reads
    their states only, so that each reading costs a few microseconds per rank."""

    def __init__(
        self, interval_s: float = SAMPLE_INTERVAL_S, proc_root: Path = Path("/proc")
    ) -> None:
        self._interval_s = interval_s
        self._proc_root = proc_root
        self._paths: tuple[tuple[int, str], ...] = ()
        self._lock = threading.Lock()
        self._stopped_s: dict[int, float] = {}
        self._last: dict[int, tuple[float, bool]] = {}  # pid -> (when read, stopped)
        self._quit = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, pids: list[int]) -> None:
        """Watch these processes from now on (one assignment: the thread sees all or
        none of it)."""
        self._paths = tuple((pid, f"{self._proc_root}/{pid}/stat") for pid in pids)

    def start(self) -> StopWatch:
        self._thread = threading.Thread(target=self._run, name="mrcdiag-stops", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._quit.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def stopped_s(self, pid: int) -> float | None:
        """Seconds `pid` was seen stopped; None before it was first read."""
        with self._lock:
            return self._stopped_s.get(pid)

    def read_once(self) -> None:
        """Read every process's state once and credit the time since the last reading."""
        now = time.monotonic()
        for pid, path in self._paths:
            state = _state_of(_read(path))
            if state is None:
                continue
            stopped = state == STOPPED
            with self._lock:
                before = self._last.get(pid)
                self._last[pid] = (now, stopped)
                total = self._stopped_s.setdefault(pid, 0.0)
                if before is None:
                    continue
                gap = now - before[0]
                if gap > MAX_CREDITED_GAP_S:
                    continue
                seen = int(stopped) + int(before[1])  # both readings: all of it
                self._stopped_s[pid] = total + gap * seen / 2

    def _run(self) -> None:
        # At random intervals around the mean: stops that come on a period of their own
        # (SIGSTOP 40 ms of every 100 ms; a CFS period is 100 ms too) would otherwise
        # be read at one phase of it, always outside them or always inside.
        # time.sleep costs a tenth of what an Event's timed wait does (a timed lock
        # acquire): at 10 wake-ups a second that is most of this thread's CPU.
        jitter = random.Random()
        while not self._quit.is_set():
            time.sleep(self._interval_s * jitter.uniform(0.5, 1.5))
            self.read_once()
