"""A rank's recording from start to end: the session, exit, SIGTERM, detach.

Recording ends at `destroy_process_group`, at interpreter exit, or on SIGTERM (what
torchrun sends every worker when one fails): each path flushes the rank's last records
so that what was recorded stays on disk, and the signal then ends the process as it
would have without us.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from typing import Any

from mrcdiag.capture.recorder import Recorder
from mrcdiag.capture.wrappers import Session, set_session, take_session


def start_session(recorder: Recorder, dist: Any, rank: int) -> Session:
    """Start recording this rank into `recorder`; flush at exit and on SIGTERM."""
    session = Session(recorder, dist, rank)
    set_session(session)
    atexit.register(detach)
    _flush_on_sigterm()
    return session


def _flush_on_sigterm() -> None:
    """Flush before dying of SIGTERM (what torchrun sends the others when a rank fails),
    so that the survivors' last half-second is on disk and the dead rank stands out.
    Only where nobody else handles SIGTERM: a handler of the user's is left alone."""
    try:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        ):
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):
        pass


def _on_sigterm(signum: int, _frame: Any) -> None:
    global _deferred_signal
    session = take_session()
    if session is None and _closing:
        # detach() is flushing in this very thread (at exit, after a failed collective):
        # dying now would lose the last half-second it is writing. It re-sends this.
        _deferred_signal = signum
        return
    try:
        if session is not None and not session.recorder.closing:
            session.recorder.close("terminated")
    finally:
        _die_of(signum)


def _die_of(signum: int) -> None:
    """End the process by `signum` as if we had no handler: the launcher sees the signal."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


_closing = False  # detach() is closing the records
_deferred_signal: int | None = None  # a SIGTERM that came meanwhile, re-sent after


def detach() -> None:
    """Stop recording and flush; called at destroy_process_group and at exit."""
    global _closing, _deferred_signal
    session = take_session()
    if session is None:
        return
    _closing = True
    try:
        steps = session.steps
        if steps.manual and steps.in_manual_step:
            steps.end_manual()
        session.recorder.close("closed")
    finally:
        _closing = False
        signum, _deferred_signal = _deferred_signal, None
        if signum is not None:
            _die_of(signum)
