"""The hot path inside every training process: the wrappers around torch.distributed.

Why wrap the Python API and DDP's comm hook rather than read PyTorch's flight recorder:
the flight recorder (TORCH_FR_BUFFER_SIZE) keeps a ring buffer that is only visible by
dumping all of it (`_dump_fr_trace_json` serialises every entry each time), has no step
boundaries or DataLoader waits, and on gloo its `time_created_ns` is the enqueue time
while completion is not recorded for CPU works. A wrapper costs a few microseconds per
call (see benchmarks/hook_overhead.py), sees arrival and completion on the caller's own
clock, and sees every caller: the Python functions, the functional collectives, and
DDP's gradient all-reduces, which capture/ddp.py routes through a Python comm hook.

On CUDA tensors the times are the device's: CUDA events around the call, resolved by
the writer thread (capture/device_timer.py); on CPU backends the host's.

Every wrapper does the same thing: time the call, put one tuple in the recorder's
deque, never raise from our side. If anything of ours fails, recording stops with one
warning and the wrapped function keeps working. This module also holds the session
(the one attached rank's state) that the wrappers read; capture/install.py puts the
wrappers in place and capture/lifecycle.py starts and ends the session.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from mrcdiag.capture import ops
from mrcdiag.capture.device_timer import device_timer_for
from mrcdiag.capture.recorder import Recorder
from mrcdiag.capture.steps import StepTracker
from mrcdiag.log import warn_once
from mrcdiag.store import schema
from mrcdiag.store.records import GroupMeta
from mrcdiag.store.schema import CollectiveRow

_now = time.monotonic_ns

DDP_SOURCE = schema.SOURCE_CODE["ddp"]
_PYTHON = schema.SOURCE_CODE["python"]
_FUNCTIONAL = schema.SOURCE_CODE["functional"]


class _ThreadState(threading.local):
    busy = False  # inside one of our wrappers (or our own traffic): do not record twice
    source = _PYTHON  # set to ddp while DDP's comm hook runs
    window = -1  # capture/dispatch.py: the source of C++-issued collectives, -1 when off
    one_shot = False  # the window closes after its first collective


thread_state = _ThreadState()  # capture/ddp.py marks DDP's calls here
_tls = thread_state


@dataclass
class _Group:
    index: int
    pg: Any  # keeps the group alive so that its id() is not reused
    size: int
    seq: int = 0
    p2p_seq: int = 0

    def next_seq(self, is_p2p: bool) -> int:
        """The next sequence number: collectives and point-to-point count apart, as
        torch's own (and the flight recorder's) do. The Python API's hot path inlines it."""
        if is_p2p:
            self.p2p_seq += 1
            return self.p2p_seq
        self.seq += 1
        return self.seq


class Session:
    """Everything the wrappers need once a rank is attached."""

    def __init__(self, recorder: Recorder, torch_dist: Any, rank: int) -> None:
        self.recorder = recorder
        self.steps = StepTracker(recorder)
        self.dist = torch_dist
        self.rank = rank
        self.groups: dict[Any, _Group] = {}  # ProcessGroup (or None) -> its entry
        self.n_groups = 0
        self.default_pg = torch_dist.distributed_c10d._get_default_group()
        import torch

        recorder.device_timer = device_timer_for(torch)

    def start_on_device(self, device: int) -> Any:
        """The device-arrival event of a collective on CUDA device `device`, else None."""
        timer = self.recorder.device_timer
        return timer.start(device) if device >= 0 and timer is not None else None

    def add_record(self, row: tuple, start_event: Any = None, device: int = -1) -> None:
        """A finished record: straight to the buffer, or first to wait for its device
        completion, recorded now on the current stream (ordered after the collective)."""
        timer = self.recorder.device_timer
        if start_event is None or timer is None:
            self.recorder.add_collective(row)
        else:
            timer.finish(row, start_event, device)

    def group(self, pg: Any) -> _Group:
        """The entry of a process group (None: the default group), made on first use."""
        found = self.groups.get(pg)
        return self.new_group(pg) if found is None else found

    def new_group(self, pg: Any) -> _Group:
        """Keyed by the group object itself (None too, for the default group): the hot
        path finds it with one dict lookup, and the entry keeps the group alive."""
        if pg is None:
            entry = self.group(self.default_pg)
            self.groups[None] = entry
            return entry
        dist = self.dist
        ranks = list(dist.get_process_group_ranks(pg))
        try:
            name = str(pg.group_name)
        except Exception:  # older torch
            name = dist.distributed_c10d._get_process_group_name(pg)
        try:
            backend = str(dist.get_backend(pg))
            if backend == "undefined":  # groups a device mesh split off say so; pg.name() knows
                backend = str(pg.name())
        except Exception:
            backend = "unknown"
        desc = str(getattr(pg, "group_desc", "") or "")
        entry = _Group(self.n_groups, pg, len(ranks))
        self.n_groups += 1
        self.groups[pg] = entry
        self.recorder.new_groups.append(
            GroupMeta(entry.index, name, tuple(ranks), backend, "" if desc == "undefined" else desc)
        )
        return entry


_session: Session | None = None


def mark_wrapper(wrapper: Any, orig: Any) -> Any:
    """Mark `wrapper` as ours around `orig`: `__mrcdiag_wrapped__` keeps patching
    idempotent, and `_torchdynamo_inline` makes torch.compile trace `orig` itself (with
    its own rules, such as turning c10d calls into functional collectives) instead of
    tracing into our recording, which it cannot."""
    wrapper.__mrcdiag_wrapped__ = orig
    wrapper._torchdynamo_inline = orig
    return wrapper


def stop_recording(reason: str, exc: BaseException) -> None:
    """Something of ours broke: say it once, stop recording, leave the job alone."""
    session = take_session()
    warn_once("hook-" + reason, f"stopped recording ({reason}: {exc!r}); the job goes on")
    if session is not None:
        session.recorder.event("disabled", reason=f"{reason}: {exc!r}")


def _pending_for(session: Session, obj: Any) -> tuple | None:
    """The pending entry of this work. The entry holds the work, so an id reused by a
    newer object is never mistaken for it."""
    entry = session.recorder.pending.get(id(obj))
    return entry if entry is not None and entry[1] is obj else None


def _finish(session: Session, obj: Any) -> None:
    """Completion of an async op (its future's callback or Work.wait): write its row."""
    try:
        pending = session.recorder.pending
        entry = _pending_for(session, obj)
        if entry is not None and pending.pop(id(obj), None) is not None:
            # the step it was issued in: its completion may be seen after the training
            # thread went on to the next step (a future's callback runs after the waiter
            # wakes; DDP's last bucket then landed in the next step, under load)
            session.add_record(entry[0] + (_now(), entry[5]), entry[2], entry[3])
            for key in entry[4]:
                session.recorder.pending_outputs.pop(key, None)
    except Exception as exc:
        stop_recording("completion", exc)


def wrap_collective(op_name: str, orig: Any) -> Any:
    code = schema.OP_CODE[op_name]
    read = ops.CALL_READERS[op_name]
    is_p2p = op_name in schema.POINT_TO_POINT_OPS

    # The hot path: every collective of the job passes here. It stays a straight line of
    # attribute reads and tuple building (see benchmarks/hook_overhead.py for its cost).
    @functools.wraps(orig)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        session = _session
        tls = _tls
        if session is None or tls.busy:
            return orig(*args, **kwargs)
        t_arrive = _now()
        try:
            nbytes, dtype, pg, is_async, peer, device = read(args, kwargs)
            group = session.groups.get(pg)
            if group is None:
                group = session.new_group(pg)
            if is_p2p:
                group.p2p_seq += 1
                seq = group.p2p_seq
            else:
                group.seq += 1
                seq = group.seq
            # The row without its end: also what "in flight" means while we wait.
            head = (code, tls.source, group.index, seq, peer, nbytes, dtype, is_async, t_arrive)
            start_event = None if device < 0 else session.start_on_device(device)
        except Exception as exc:
            stop_recording(op_name, exc)
            return orig(*args, **kwargs)
        recorder = session.recorder
        tls.busy = True
        if is_async:
            try:
                result = orig(*args, **kwargs)
            finally:
                tls.busy = False
            try:
                session.steps.n_collectives += 1
                work = result[-1] if isinstance(result, list) and result else result
                track_async(session, work, head, start_event, device)
            except Exception as exc:
                stop_recording(op_name, exc)
            return result
        recorder.inflight = head
        try:
            result = orig(*args, **kwargs)
        finally:
            tls.busy = False
            recorder.inflight = None
        t_end = _now()
        try:
            steps = session.steps
            if is_p2p and peer < 0 and isinstance(result, int):
                # recv from any source: the sender
                head = head[: CollectiveRow.PEER] + (result,) + head[CollectiveRow.PEER + 1 :]
            if start_event is None:
                recorder.add_collective(head + (t_end, steps.index))
            else:
                session.add_record(head + (t_end, steps.index), start_event, device)
            steps.comm_ns += t_end - t_arrive
            steps.n_collectives += 1
        except Exception as exc:
            stop_recording(op_name, exc)
        return result

    return mark_wrapper(wrapper, orig)


def wrap_batch_p2p(orig: Any) -> Any:
    """batch_isend_irecv (pipeline schedules): one row per send or receive in the batch,
    with its own direction and peer, all arriving when the batch is issued. Gloo returns
    a work per operation; a coalescing backend (NCCL) one work for all of them."""
    send_code, recv_code = schema.OP_CODE["isend"], schema.OP_CODE["irecv"]

    @functools.wraps(orig)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        session = _session
        tls = _tls
        if session is None or tls.busy:
            return orig(*args, **kwargs)
        t_arrive = _now()
        try:
            heads = []
            p2p_ops = args[0] if args else kwargs["p2p_op_list"]
            for p2p in p2p_ops:
                is_send = getattr(p2p.op, "__name__", "") in ("isend", "send")
                group = session.group(p2p.group)
                tensor = p2p.tensor
                heads.append(
                    (
                        send_code if is_send else recv_code,
                        tls.source,
                        group.index,
                        group.next_seq(True),
                        int(p2p.peer),
                        tensor.nbytes,
                        ops.dtype_code(tensor.dtype),
                        True,
                        t_arrive,
                    )
                )
            device = ops.cuda_index(p2p_ops[0].tensor) if p2p_ops else -1
            start_event = session.start_on_device(device)
        except Exception as exc:
            stop_recording("batch_isend_irecv", exc)
            return orig(*args, **kwargs)
        tls.busy = True
        try:
            works = orig(*args, **kwargs)
        finally:
            tls.busy = False
        try:
            session.steps.n_collectives += len(heads)
            works = list(works or [])
            if len(works) == len(heads):
                for head, work in zip(heads, works, strict=True):
                    track_async(session, work, head, start_event, device)
            elif works:  # coalesced: the batch's one work completes every row
                track_async(session, works[-1], heads[0], start_event, device)
                future = works[-1].get_future()
                issued_in = session.steps.index
                for head in heads[1:]:
                    future.add_done_callback(
                        lambda _f, h=head: session.add_record(
                            h + (_now(), issued_in), start_event, device
                        )
                    )
        except Exception as exc:
            stop_recording("batch_isend_irecv", exc)
        return works

    return mark_wrapper(wrapper, orig)


# The last all-reduces of DDP, kept from Python. A Work issued in backward holds Python
# objects: the tensors our comm hook hands over (bucket.buffer()), the Python callbacks
# of its future, and the thread-local state it captured (torch 2.13 stashes a
# contextvars context there for the length of backward(); DDP's own C++ all-reduces
# carry it too). Whoever drops a Work last frees them, and must take the GIL to do so.
# If that is gloo's worker thread (a barrier keeps the works before it, and is freed
# there when it ends) after the interpreter began to finalize, the thread is torn down
# inside a C++ destructor and the process aborts at exit ("terminate called without an
# active exception": a 2-rank DDP demo aborted so in 3 exits of 20 without mrcdiag, none
# of 40 with this). Held here, the last reference is dropped by the thread that issues
# the next step's first bucket, or when this module is torn down. Only the newest step's
# works: each holds about a megabyte while it is kept (64 kept, the works of 32 steps of
# a 2-bucket model, made the first 32 steps of a 75 ms step 20% slower and the rank 60
# MiB larger, benchmarks/peers.py), and a step's buckets are all complete before the
# next step begins. Only CPU (gloo) Works, where the abort was seen; on GPUs a user's
# compression hook makes a new tensor per bucket, which would hold device memory.
class _NewestStepWorks:
    LIMIT = 64  # where no step is ever seen (no optimizer), the last 64

    def __init__(self) -> None:
        self.step = -1
        self.works: deque = deque(maxlen=self.LIMIT)

    def keep(self, work: Any, step: int) -> None:
        if step != self.step:
            self.step = step
            self.works.clear()  # the previous step's, all complete
        self.works.append(work)


ddp_works_kept = _NewestStepWorks()


def track_async(
    session: Session,
    work: Any,
    head: tuple,
    start_event: Any = None,
    device: int = -1,
    output_keys: tuple = (),
) -> None:
    """Keep `head` until `work` completes: its future's callback, Work.wait, or a
    wait_tensor on one of the outputs whose storage pointers are `output_keys`."""
    if work is None:
        return
    recorder = session.recorder
    if len(recorder.pending) > 100_000:  # works nobody waits for: do not grow forever
        recorder.incomplete += len(recorder.pending)
        recorder.pending.clear()
        recorder.pending_outputs.clear()
    recorder.pending[id(work)] = (head, work, start_event, device, output_keys, session.steps.index)
    for key in output_keys:
        recorder.pending_outputs[key] = work
    if head[CollectiveRow.SOURCE] == DDP_SOURCE and device < 0:
        ddp_works_kept.keep(work, session.steps.index)
    try:
        future = work.get_future()
    except Exception:  # gloo p2p works have no future: Work.wait finishes them
        return
    future.add_done_callback(lambda _f: _finish(session, work))


def wrap_work_wait(orig: Any) -> Any:
    @functools.wraps(orig)
    def wait(self: Any, *args: Any, **kwargs: Any) -> Any:
        session = _session
        if session is None:
            return orig(self, *args, **kwargs)
        entry = _pending_for(session, self)
        if entry is None:
            return orig(self, *args, **kwargs)
        t0 = _now()
        session.recorder.inflight = entry[0]
        try:
            result = orig(self, *args, **kwargs)
        finally:
            session.recorder.inflight = None
        session.steps.comm_ns += _now() - t0
        _finish(session, self)
        return result

    return mark_wrapper(wait, orig)


def wrap_functional(name: str, orig: Any) -> Any:
    """A functional collective (torch.distributed._functional_collectives): its C++
    implementation issues the c10d op, which capture/dispatch.py records within the
    window opened here, completed from its Work however the result is wrapped."""
    import torch

    from mrcdiag.capture.dispatch import window

    is_compiling = torch.compiler.is_compiling

    @functools.wraps(orig)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # Under torch.compile's tracing, nothing of ours: Dynamo traces the original.
        if is_compiling() or _session is None or _tls.busy:
            return orig(*args, **kwargs)
        with window(_FUNCTIONAL):
            return orig(*args, **kwargs)

    return mark_wrapper(wrapper, orig)


def wrap_wait_tensor(orig: Any) -> Any:
    """Where a functional collective's caller blocks: the time counts as communication
    in the step. The row itself completes from its Work (capture/dispatch.py)."""

    @functools.wraps(orig)
    def wait_tensor(tensor: Any) -> Any:
        session = _session
        if session is None:
            return orig(tensor)
        t0 = _now()
        result = orig(tensor)
        session.steps.comm_ns += _now() - t0
        try:
            # Gloo completes the futures of coalesced works late or never: the wait
            # on any view of an output completes the row, if its future has not.
            outputs = session.recorder.pending_outputs
            if outputs:
                work = outputs.pop(tensor.untyped_storage().data_ptr(), None)
                if work is not None:
                    _finish(session, work)
        except Exception as exc:
            stop_recording("wait_tensor", exc)
        return result

    return mark_wrapper(wait_tensor, orig)


def current_session() -> Session | None:
    return _session


def set_session(session: Session | None) -> None:
    """Make `session` the one the wrappers record into (None: record nothing)."""
    global _session
    _session = session


def take_session() -> Session | None:
    """End recording: the session that was current, which the wrappers no longer see."""
    global _session
    session, _session = _session, None
    return session


class own_traffic:
    """Context in which collectives are ours (clock sync) and are not recorded."""

    def __enter__(self) -> None:
        self._previous = _tls.busy
        _tls.busy = True

    def __exit__(self, *exc: Any) -> None:
        _tls.busy = self._previous
