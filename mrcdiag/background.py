"""mrcdiag's own threads run on the CPU time the training job leaves.

The node agent's sampling, its live analysis and HTTP server, and each rank's writer
thread call `yield_to_the_job()` when they start: on Linux, where the nice value is a
thread's own, theirs goes up by BACKGROUND_NICE, so that on a node whose cores the job
keeps busy they run in the gaps rather than taking turns with the training threads (at
nice 10 a thread gets about a tenth of a contended core: enough for work that takes
milliseconds a second). Threads they start inherit it. Nothing changes elsewhere or
where the system refuses.
"""

from __future__ import annotations

import os
import threading

BACKGROUND_NICE = 10


def yield_to_the_job() -> None:
    """Lower the calling thread's priority (never the process's other threads)."""
    setpriority = getattr(os, "setpriority", None)
    if setpriority is None or not hasattr(threading, "get_native_id"):
        return
    try:
        tid = threading.get_native_id()
        if tid == os.getpid():
            return  # the main thread: on Linux its nice would pass to every child
        current = os.getpriority(os.PRIO_PROCESS, tid)
        setpriority(os.PRIO_PROCESS, tid, min(19, current + BACKGROUND_NICE))
    except OSError:
        pass  # not permitted here: the thread runs at the job's priority
