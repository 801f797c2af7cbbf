"""Where each of a rank's threads is, written down on request.

A hang is diagnosed from outside the ranks (the live analysis, or the launcher when it is
told to stop), but a Python stack is read best from inside: `sys._current_frames()` sees
every thread. The rank's writer thread looks for a request file in the rank's directory
on each of its rounds (twice a second; it runs while the training thread is blocked in a
collective or in user code, both of which release the GIL) and answers with
`stacks.json`, written atomically and bounded in size.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from mrcdiag.store import layout
from mrcdiag.store.writer import write_json_atomic

MAX_THREADS = 64
MAX_FRAMES = 40  # per thread, the innermost ones


def thread_stacks() -> list[dict[str, Any]]:
    """Every thread's stack, innermost frame last, the training thread first."""
    names = {t.ident: t.name for t in threading.enumerate()}
    main = threading.main_thread().ident
    out = []
    for ident, frame in sys._current_frames().items():
        frames = traceback.extract_stack(frame)[-MAX_FRAMES:]
        out.append(
            {
                "thread": names.get(ident, f"thread-{ident}"),
                "main": ident == main,
                "frames": [
                    {"file": f.filename, "line": f.lineno or 0, "function": f.name} for f in frames
                ],
            }
        )
    out.sort(key=lambda t: (not t["main"], t["thread"]))
    return out[:MAX_THREADS]


class StackRequests:
    """Answers requests for the rank's stacks (a newer `stacks.request` than the last
    one answered) from the writer thread."""

    def __init__(self, rank_dir: Path) -> None:
        self.rank_dir = rank_dir
        self._answered_ns = 0

    def serve(self) -> bool:
        """Write stacks.json if asked since the last time; True when it did."""
        try:
            asked_ns = (self.rank_dir / layout.STACKS_REQUEST_FILE).stat().st_mtime_ns
        except OSError:
            return False
        if asked_ns <= self._answered_ns:
            return False
        self._answered_ns = asked_ns
        write_stacks(self.rank_dir, reason="requested")
        if flight_recorder_on():  # PyTorch's own record of the collectives, beside them
            from mrcdiag.capture.lifecycle import dump_flight_recorder

            dump_flight_recorder(self.rank_dir / layout.FLIGHT_RECORDER_HANG_FILE)
        return True


def flight_recorder_on() -> bool:
    """The job runs PyTorch's flight recorder (TORCH_FR_BUFFER_SIZE, or NCCL's older
    TORCH_NCCL_TRACE_BUFFER_SIZE, above 0)."""
    for name in ("TORCH_FR_BUFFER_SIZE", "TORCH_NCCL_TRACE_BUFFER_SIZE"):
        try:
            if int(os.environ.get(name, "0") or 0) > 0:
                return True
        except ValueError:
            continue
    return False


def write_stacks(rank_dir: Path, reason: str) -> None:
    write_json_atomic(
        rank_dir / layout.STACKS_FILE,
        {"t_unix_s": time.time(), "reason": reason, "threads": thread_stacks()},
    )


def request_stacks(rank_dirs: list[Path]) -> None:
    """Ask the ranks of these directories for their stacks (answered within a second)."""
    for rank_dir in rank_dirs:
        try:
            (rank_dir / layout.STACKS_REQUEST_FILE).touch()
        except OSError:
            continue
