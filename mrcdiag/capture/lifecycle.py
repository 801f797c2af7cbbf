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
import sys
import threading
import traceback
from typing import Any

from mrcdiag.capture.recorder import Recorder
from mrcdiag.capture.wrappers import Session, current_session, set_session, take_session
from mrcdiag.log import warn_once
from mrcdiag.store import layout, records, schema
from mrcdiag.store.schema import CollectiveRow as Row

# Set by `mrcdiag launch --verify-capture`: dump PyTorch's flight recorder at detach.
VERIFY_ENV = "MRCDIAG_VERIFY_CAPTURE"


def start_session(recorder: Recorder, dist: Any, rank: int) -> Session:
    """Start recording this rank into `recorder`; flush at exit and on SIGTERM."""
    session = Session(recorder, dist, rank)
    set_session(session)
    atexit.register(detach)
    _flush_on_sigterm()
    _note_uncaught_exceptions()
    _note_fatal_signals(recorder.rank_dir)
    return session


_fatal_file: Any = None  # kept open for faulthandler, which writes to its descriptor


def _note_fatal_signals(rank_dir: Any) -> None:
    """A rank that dies of SIGSEGV, SIGABRT ("terminate called..."), SIGBUS, SIGFPE or
    SIGILL writes the signal and where each thread was into fatal.txt (Python's
    faulthandler, which then lets the signal kill the process as before). Left alone
    where the job enabled faulthandler itself (PYTHONFAULTHANDLER, or its own call)."""
    global _fatal_file
    try:
        import faulthandler

        if faulthandler.is_enabled():
            return
        _fatal_file = open(rank_dir / layout.FATAL_FILE, "a", buffering=1)  # noqa: SIM115
        faulthandler.enable(file=_fatal_file, all_threads=True)
    except (OSError, ValueError, RuntimeError) as exc:
        warn_once("faulthandler", f"cannot note fatal signals ({exc!r})")


def _note_uncaught_exceptions() -> None:
    """A rank that dies of an exception says so (its last line, the step, the collective
    it was in) before exit closes its records, which would otherwise look clean."""
    previous = sys.excepthook

    def hook(exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            session = current_session()
            if session is not None:
                inflight = session.recorder.inflight
                where = {}
                if inflight is not None:
                    where = {
                        "op": schema.OPS[inflight[Row.OP]],
                        "group": inflight[Row.GROUP],
                        "seq": inflight[Row.SEQ],
                    }
                line = traceback.format_exception_only(exc_type, exc)[-1].strip()
                session.recorder.event(
                    records.EVENT_EXCEPTION,
                    error=line[:500],
                    step=session.steps.index,
                    **({"in_collective": where} if where else {}),
                )
        except Exception as exc_inner:  # the job's own traceback is printed all the same
            warn_once("excepthook", f"could not note the exception ({exc_inner!r})")
        previous(exc_type, exc, tb)

    sys.excepthook = hook


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
        if os.environ.get(VERIFY_ENV):
            dump_flight_recorder(session.recorder.rank_dir / layout.FLIGHT_RECORDER_FILE)
        session.recorder.close("closed")
    finally:
        _closing = False
        signum, _deferred_signal = _deferred_signal, None
        if signum is not None:
            _die_of(signum)


def dump_flight_recorder(path: Any) -> None:
    """Write what PyTorch's flight recorder holds for this rank beside our records (for
    the capture check, or on a hang). Needs TORCH_FR_BUFFER_SIZE."""
    try:
        import torch

        text = torch._C._distributed_c10d._dump_fr_trace_json(includeCollectives=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text if isinstance(text, str) else text.decode(), encoding="utf-8")
        os.replace(tmp, path)
    except Exception as exc:
        warn_once("flight-recorder", f"cannot dump the flight recorder ({exc!r})")
