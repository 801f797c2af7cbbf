"""The in-memory buffer of one rank and the thread that moves it to disk.

The training thread only appends tuples to deques (atomic under the GIL, no lock, no
I/O). A daemon thread drains them twice a second into the rank's Arrow streams, so a
SIGKILL loses at most about half a second of records. When the writer falls behind the
buffer stops growing at `capacity` and later records are dropped and counted; the count
is written to events.jsonl and shown by the report.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from mrcdiag.background import yield_to_the_job
from mrcdiag.capture.device_timer import DeviceTimer
from mrcdiag.capture.stacks import StackRequests
from mrcdiag.log import warn_once
from mrcdiag.store import layout, records, schema
from mrcdiag.store.schema import CollectiveRow as Row
from mrcdiag.store.writer import JsonLines, StreamTable

FLUSH_INTERVAL_S = 0.5
DEFAULT_CAPACITY = 1 << 20
# An in-flight collective older than this is written down, so a hang leaves a trace.
INFLIGHT_REPORT_AFTER_NS = 1_000_000_000


class Recorder:
    """Buffers records of one rank and writes them from a background thread."""

    def __init__(self, rank_dir: Path, capacity: int = DEFAULT_CAPACITY) -> None:
        self.rank_dir = rank_dir
        self.capacity = capacity
        self.collectives: deque[tuple] = deque()
        self.steps: deque[tuple] = deque()
        self.new_groups: deque[records.GroupMeta] = deque()
        self.dropped = 0
        self.incomplete = 0  # async records given up on before they completed
        # The row (without end and step) of the collective the training thread is blocked
        # in; and async ones not yet complete: id(work or tensor) -> (row, its owner).
        self.inflight: tuple | None = None
        self.pending: dict[int, tuple] = {}
        # Functional collectives: storage of an output -> its work, for wait_tensor.
        self.pending_outputs: dict[int, Any] = {}
        self.failed = False
        self._written_dropped = 0
        self._reported_inflight: tuple | None = None
        self._stop = threading.Event()
        self._collective_table = StreamTable(
            rank_dir / layout.COLLECTIVES_FILE, schema.COLLECTIVE_SCHEMA
        )
        self._step_table = StreamTable(rank_dir / layout.STEPS_FILE, schema.STEP_SCHEMA)
        self._groups = JsonLines(rank_dir / layout.GROUPS_FILE)
        self._events = JsonLines(rank_dir / layout.EVENTS_FILE)
        self._thread = threading.Thread(target=self._run, name="mrcdiag-writer", daemon=True)
        self._lock = threading.Lock()  # writer side only: flush() from atexit vs the thread
        self.closing = False  # set first thing in close(), so a signal never re-enters it
        # CUDA collectives wait here for their device times (None off the GPU).
        self.device_timer: DeviceTimer | None = None
        self._stacks = StackRequests(rank_dir)

    # --- hot path ------------------------------------------------------------------
    def add_collective(self, row: tuple) -> None:
        if len(self.collectives) < self.capacity:
            self.collectives.append(row)
        else:
            self.dropped += 1

    def add_step(self, row: tuple) -> None:
        if len(self.steps) < self.capacity:
            self.steps.append(row)
        else:
            self.dropped += 1

    # --- writer side -----------------------------------------------------------------
    def start(self) -> None:
        self.event(records.EVENT_ATTACHED)
        self._thread.start()

    def event(self, name: str, **fields: Any) -> None:
        try:
            self._events.append(records.Event(name, time.monotonic_ns(), fields).to_json())
        except Exception as exc:
            warn_once("events", f"cannot write events.jsonl ({exc}); continuing")

    def _run(self) -> None:
        yield_to_the_job()
        while not self._stop.wait(FLUSH_INTERVAL_S):
            self.flush()
            if self.failed:
                return
            try:
                self._stacks.serve()
            except Exception as exc:  # a diagnosis aid: never the job's problem
                warn_once("stacks", f"cannot write this rank's stacks ({exc!r})")

    def flush(self) -> None:
        """Move everything buffered so far to disk. Never raises."""
        with self._lock:
            if self.failed:
                return
            try:
                self._flush_locked()
            except Exception as exc:  # the job must go on
                self.failed = True
                warn_once("flush", f"stopped recording: cannot write the run directory ({exc})")

    def _drain(self, queue: deque) -> list:
        return [queue.popleft() for _ in range(len(queue))]

    def _flush_locked(self) -> None:
        # Groups first: a collective row must never name a group the reader cannot find.
        for group in self._drain(self.new_groups):
            self._groups.append(group.to_json())
        self._collective_table.append_rows(self._drain(self.collectives))
        self._collective_table.append_rows(self._device_timed())
        self._step_table.append_rows(self._drain(self.steps))
        if self.total_dropped != self._written_dropped:
            self._written_dropped = self.total_dropped
            self.event(records.EVENT_DROPPED, records=self._written_dropped)
        self._note_inflight()

    @property
    def total_dropped(self) -> int:
        timer = self.device_timer
        return self.dropped + (timer.dropped if timer else 0)

    def _device_timed(self) -> list[tuple]:
        """Rows whose CUDA events have completed. A failure there costs the device times
        only: the rows still queued are written with their host times."""
        timer = self.device_timer
        if timer is None:
            return []
        rows: list[tuple] = []
        try:
            timer.resolve(rows, final=self.closing)
        except Exception as exc:
            self.device_timer = None
            warn_once("device-timer", f"collectives keep host times only ({exc!r})")
            self.event(records.EVENT_DEVICE_TIMING_OFF, reason=repr(exc))
            rows += [entry[0] for entry in timer.take_all()]
        return rows

    def _note_inflight(self) -> None:
        now = time.monotonic_ns()
        candidates = [] if self.inflight is None else [self.inflight]
        candidates += [entry[0] for entry in list(self.pending.values())]
        timer = self.device_timer
        oldest_on_device = timer.queued[0] if timer is not None and timer.queued else None
        if oldest_on_device is not None and not oldest_on_device[2].query():
            candidates.append(oldest_on_device[0])  # queued long ago, still not done on the GPU
        stuck = [c for c in candidates if now - c[Row.T_ARRIVE_NS] > INFLIGHT_REPORT_AFTER_NS]
        if not stuck:
            return
        oldest = min(stuck, key=lambda c: c[Row.T_ARRIVE_NS])
        key = (oldest[Row.GROUP], oldest[Row.SEQ], oldest[Row.OP])
        if key == self._reported_inflight:
            return
        self._reported_inflight = key
        self.event(
            records.EVENT_IN_COLLECTIVE,
            op=schema.OPS[oldest[Row.OP]],
            group=oldest[Row.GROUP],
            seq=oldest[Row.SEQ],
            nbytes=oldest[Row.NBYTES],
            t_arrive_ns=oldest[Row.T_ARRIVE_NS],
        )

    def _incomplete(self) -> dict[str, Any]:
        """Async collectives that never completed (nobody waited, or the job ended in
        them): counted in the closing event, by op, never dropped silently."""
        by_op: dict[str, int] = {}
        for entry in list(self.pending.values()):
            name = schema.OPS[entry[0][Row.OP]]
            by_op[name] = by_op.get(name, 0) + 1
        total = self.incomplete + sum(by_op.values())
        return {"incomplete": total, "incomplete_by_op": by_op} if total else {}

    def close(self, reason: str = records.EVENT_CLOSED) -> None:
        """Flush and close the files; safe to call twice and from atexit."""
        self.closing = True
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)
        self.flush()
        with self._lock:
            if self.failed and reason == records.EVENT_CLOSED:
                return
            self.failed = True  # nothing is written after close
            try:
                self.event(reason, dropped=self.total_dropped, **self._incomplete())
                self._collective_table.close()
                self._step_table.close()
                self._groups.close()
                self._events.close()
            except Exception as exc:
                warn_once("close", f"could not close the run directory cleanly ({exc})")
