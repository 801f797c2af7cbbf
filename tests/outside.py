"""Faults from outside a running job, as a hypervisor or a co-tenant brings them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from mrcdiag.store import layout


@contextlib.contextmanager
def stopped_on_a_duty_cycle(
    run_dir: Path, rank: int, job: subprocess.Popen, stopped_s: float, period_s: float
) -> Iterator[None]:
    """SIGSTOP `rank` for `stopped_s` of every `period_s` from when it attaches (its
    rank.json names its pid) until the block ends or the rank is gone."""
    meta = layout.rank_dir(run_dir, rank) / layout.RANK_META_FILE
    stop = threading.Event()

    def duty_cycle() -> None:
        while not meta.exists() and job.poll() is None and not stop.is_set():
            stop.wait(0.05)  # the rank attached: its pid
        if not meta.exists():
            return
        pid = json.loads(meta.read_text())["pid"]
        while not stop.is_set():
            try:
                os.kill(pid, signal.SIGSTOP)
                time.sleep(stopped_s)  # the fault itself: stopped this long ...
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                return
            stop.wait(period_s - stopped_s)  # ... of every period

    thread = threading.Thread(target=duty_cycle, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
