"""The hook inside every training process: wraps torch.distributed and records.

Why wrap the Python API and DDP's comm hook rather than read PyTorch's flight recorder:
the flight recorder (TORCH_FR_BUFFER_SIZE) keeps a ring buffer that is only visible by
dumping all of it (`_dump_fr_trace_json` serialises every entry each time), has no step
boundaries or DataLoader waits, and on gloo its `time_created_ns` is the enqueue time
while completion is not recorded for CPU works. A wrapper costs a few microseconds per
call (see benchmarks/hook_overhead.py), sees arrival and completion on the caller's own
clock, and sees every caller: the Python functions, the functional collectives, and
DDP's gradient all-reduces, which we route through a Python comm hook (a user's own hook
keeps working: we call it instead of ours).

On CUDA tensors the times are the device's: CUDA events around the call, resolved by
the writer thread (agent/device_timer.py); on CPU backends the host's.

Every wrapper does the same thing: time the call, put one tuple in the recorder's
deque, never raise from our side. If anything of ours fails, recording stops with one
warning and the wrapped function keeps working.
"""

from __future__ import annotations

import atexit
import functools
import os
import signal
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrcdiag.agent import ops
from mrcdiag.agent.device_timer import device_timer_for
from mrcdiag.agent.log import warn_once
from mrcdiag.agent.recorder import Recorder
from mrcdiag.agent.steps import StepTracker
from mrcdiag.store import schema

_now = time.monotonic_ns

_DDP = schema.SOURCE_CODE["ddp"]
_PYTHON = schema.SOURCE_CODE["python"]
_FUNCTIONAL = schema.SOURCE_CODE["functional"]


class _ThreadState(threading.local):
    busy = False  # inside one of our wrappers (or our own traffic): do not record twice
    source = _PYTHON  # set to ddp while DDP's comm hook runs


_tls = _ThreadState()


@dataclass
class _Group:
    index: int
    pg: Any  # keeps the group alive so that its id() is not reused
    size: int
    seq: int = 0
    p2p_seq: int = 0


class _Session:
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
        except Exception:  # noqa: BLE001 - older torch
            name = dist.distributed_c10d._get_process_group_name(pg)
        try:
            backend = str(dist.get_backend(pg))
        except Exception:  # noqa: BLE001
            backend = "unknown"
        entry = _Group(self.n_groups, pg, len(ranks))
        self.n_groups += 1
        self.groups[pg] = entry
        self.recorder.new_groups.append(
            {"index": entry.index, "name": name, "ranks": ranks, "backend": backend}
        )
        return entry


_session: _Session | None = None


def _stop_recording(reason: str, exc: BaseException) -> None:
    """Something of ours broke: say it once, stop recording, leave the job alone."""
    global _session
    session = _session
    _session = None
    warn_once("hook-" + reason, f"stopped recording ({reason}: {exc!r}); the job goes on")
    if session is not None:
        session.recorder.event("disabled", reason=f"{reason}: {exc!r}")


def _owner(entry: tuple) -> Any:
    owner = entry[1]
    return owner() if isinstance(owner, weakref.ref) else owner


def _pending_for(session: _Session, obj: Any) -> tuple | None:
    """The pending entry of this work or tensor. The entry holds the object (or a weak
    reference to it), so an id reused by a newer object is never mistaken for it."""
    entry = session.recorder.pending.get(id(obj))
    return entry if entry is not None and _owner(entry) is obj else None


def _finish(session: _Session, obj: Any) -> None:
    """Completion of an async op (future callback, Work.wait, wait_tensor): write its row."""
    try:
        pending = session.recorder.pending
        entry = _pending_for(session, obj)
        if entry is not None and pending.pop(id(obj), None) is not None:
            session.add_record(entry[0] + (_now(), session.steps.index), *entry[2:])
    except Exception as exc:  # noqa: BLE001
        _stop_recording("completion", exc)


def _wrap_collective(op_name: str, orig: Any) -> Any:
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
        except Exception as exc:  # noqa: BLE001
            _stop_recording(op_name, exc)
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
                _track_async(session, work, head, start_event, device)
            except Exception as exc:  # noqa: BLE001
                _stop_recording(op_name, exc)
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
                head = head[:4] + (result,) + head[5:]  # recv from any source: the sender
            if start_event is None:
                recorder.add_collective(head + (t_end, steps.index))
            else:
                session.add_record(head + (t_end, steps.index), start_event, device)
            steps.comm_ns += t_end - t_arrive
            steps.n_collectives += 1
        except Exception as exc:  # noqa: BLE001
            _stop_recording(op_name, exc)
        return result

    wrapper.__mrcdiag_wrapped__ = orig  # type: ignore[attr-defined]
    return wrapper


# The last all-reduces of DDP, kept from Python. A Work issued in backward holds Python
# objects: the tensors our comm hook hands over (bucket.buffer()), the Python callbacks
# of its future, and the thread-local state it captured (torch 2.13 stashes a
# contextvars context there for the length of backward(); DDP's own C++ all-reduces
# carry it too). Whoever drops a Work last frees them, and must take the GIL to do so.
# If that is gloo's worker thread (a barrier keeps the works before it, and is freed
# there when it ends) after the interpreter began to finalize, the thread is torn down
# inside a C++ destructor and the process aborts at exit ("terminate called without an active exception": a 2-rank DDP
# demo aborted so in 3 exits of 20 without mrcdiag, none of 40 with this). Held here, the
# last reference is dropped by the main thread, at the latest when this module is torn
# down. Only CPU (gloo) Works, where this was seen: their bucket buffers are DDP's own,
# long-lived memory, so keeping them costs nothing; on GPUs a user's compression hook
# makes a new tensor per bucket, and 64 of those would hold device memory.
_ddp_works_kept: deque = deque(maxlen=64)


def _track_async(
    session: _Session, work: Any, head: tuple, start_event: Any = None, device: int = -1
) -> None:
    if work is None:
        return
    recorder = session.recorder
    if len(recorder.pending) > 100_000:  # works nobody waits for: do not grow forever
        recorder.pending.clear()
    recorder.pending[id(work)] = (head, work, start_event, device)
    if head[1] == _DDP and device < 0:
        _ddp_works_kept.append(work)
    try:
        future = work.get_future()
    except Exception:  # noqa: BLE001 - gloo p2p works have no future: Work.wait finishes them
        return
    future.add_done_callback(lambda _f: _finish(session, work))


def _wrap_work_wait(orig: Any) -> Any:
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

    wait.__mrcdiag_wrapped__ = orig  # type: ignore[attr-defined]
    return wait


def _wrap_functional(name: str, orig: Any) -> Any:
    op_name, read, output_sized = ops.FUNCTIONAL_READERS[name]
    code = schema.OP_CODE[op_name]

    @functools.wraps(orig)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        session = _session
        if session is None or _tls.busy:
            return orig(*args, **kwargs)
        t_arrive = _now()
        try:
            device = ops.cuda_index(args[0] if args else kwargs.get("self", kwargs.get("inputs")))
            start_event = session.start_on_device(device)
        except Exception as exc:  # noqa: BLE001
            _stop_recording("functional " + name, exc)
            return orig(*args, **kwargs)
        _tls.busy = True
        try:
            result = orig(*args, **kwargs)
        finally:
            _tls.busy = False
        try:
            tensors, group_spec = read(args, kwargs)
            pg = _resolve_functional_group(session, group_spec, kwargs.get("tag", ""))
            group = session.group(pg)
            group.seq += 1
            nbytes = sum(t.nbytes for t in tensors)
            if output_sized:
                nbytes *= group.size
            head = (
                code,
                _FUNCTIONAL,
                group.index,
                group.seq,
                -1,
                nbytes,
                ops.dtype_code(tensors[0].dtype),
                True,
                t_arrive,
            )
            first = result[0] if isinstance(result, list) else result
            tensor = getattr(first, "elem", first)
            session.recorder.pending[id(tensor)] = (
                head,
                weakref.ref(tensor),
                start_event,
                device,
            )
            session.steps.n_collectives += 1
        except Exception as exc:  # noqa: BLE001
            _stop_recording("functional " + name, exc)
        return result

    wrapper.__mrcdiag_wrapped__ = orig  # type: ignore[attr-defined]
    return wrapper


def _resolve_functional_group(session: _Session, group_spec: Any, tag: str) -> Any:
    import torch.distributed._functional_collectives as fc

    name = fc._resolve_group_name(group_spec, tag)
    return session.dist.distributed_c10d._resolve_process_group(name)


def _wrap_wait_tensor(orig: Any) -> Any:
    @functools.wraps(orig)
    def wait_tensor(tensor: Any) -> Any:
        session = _session
        if session is None:
            return orig(tensor)
        if _pending_for(session, tensor) is None:
            return orig(tensor)
        t0 = _now()
        result = orig(tensor)
        session.steps.comm_ns += _now() - t0
        _finish(session, tensor)
        return result

    wait_tensor.__mrcdiag_wrapped__ = orig  # type: ignore[attr-defined]
    return wait_tensor


# --- DDP -----------------------------------------------------------------------------
class _DDPDispatch:
    """Our comm hook on a DDP module: runs the user's hook if one was registered."""

    def __init__(self, process_group: Any, average_in_collective: bool = False) -> None:
        self.process_group = process_group
        self.average_in_collective = average_in_collective  # ReduceOp.AVG: gloo, NCCL
        self.user_state: Any = None
        self.user_hook: Any = None
        self.avg_refused = False  # set when the backend refuses ReduceOp.AVG once

    def as_hook(self) -> Any:
        """A plain function, as DDP wants: named, and with no annotation on `bucket`."""

        # No annotations on purpose: DDP rejects a hook whose `bucket` is annotated with
        # anything but dist.GradBucket, and this module postpones annotations as strings.
        def mrcdiag_comm_hook(state, bucket):  # noqa: ANN001, ANN202
            return self.run(bucket)

        return mrcdiag_comm_hook

    def run(self, bucket: Any) -> Any:
        previous = _tls.source
        _tls.source = _DDP
        try:
            if self.user_hook is not None:
                return self.user_hook(self.user_state, bucket)
            if self.average_in_collective:
                return self._average_in_collective(bucket)
            return _torch_allreduce_hook(self.process_group, bucket)
        finally:
            _tls.source = previous

    def _average_in_collective(self, bucket: Any) -> Any:
        """DDP's average with no extra pass over the gradients.

        DDP's own C++ path folds the division into its copy into the bucket; a Python
        hook that divides first (torch's allreduce_hook) adds a pass over every gradient:
        on CPU a few percent of a step on the training thread, on a GPU a read and a
        write of every gradient byte in device memory. Gloo (torch >= 2.6) and NCCL
        (>= 2.10) average inside the all-reduce (ReduceOp.AVG; NCCL pre-multiplies
        floats by 1/n, so fp16 sums do not overflow). Where the backend refuses: on CPU
        the division runs when the sum completes, off the training thread; on a GPU,
        torch's allreduce_hook (divide first, against fp16 overflow).
        """
        import torch.distributed as dist

        tensor = bucket.buffer()
        size = self.process_group.size()
        if size == 1:  # the average of one: no pass over the gradients at all
            work = dist.all_reduce(tensor, group=self.process_group, async_op=True)
            return work.get_future().then(_first_value)
        if not self.avg_refused:
            try:
                work = dist.all_reduce(
                    tensor, op=dist.ReduceOp.AVG, group=self.process_group, async_op=True
                )
                return work.get_future().then(_first_value)
            except (RuntimeError, ValueError):  # an older gloo or NCCL
                self.avg_refused = True
        if tensor.is_cuda:
            return _torch_allreduce_hook(self.process_group, bucket)
        work = dist.all_reduce(tensor, group=self.process_group, async_op=True)
        return work.get_future().then(lambda fut: fut.value()[0].div_(size))


def _torch_allreduce_hook(process_group: Any, bucket: Any) -> Any:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    return default_hooks.allreduce_hook(process_group, bucket)


def _first_value(fut: Any) -> Any:
    return fut.value()[0]


def _averages_in_collective(ddp: Any) -> bool:
    """Whether this DDP's gradients go to a backend that averages inside the all-reduce:
    NCCL for CUDA parameters, gloo for CPU ones ("cpu:gloo,cuda:nccl" routes by device).
    Gloo's CUDA path and other backends (MPI, XCCL, vendors') keep torch's own hook."""
    try:
        import torch.distributed as dist

        backend = str(dist.get_backend(ddp.process_group)).lower()
        on_gpu = any(p.is_cuda for p in ddp.module.parameters())
    except Exception:  # noqa: BLE001 - when unsure, torch's own hook
        return False
    if on_gpu:
        return "nccl" in backend
    return backend == "gloo" or "cpu:gloo" in backend


def _patch_ddp(ddp_cls: Any) -> None:
    if getattr(ddp_cls, "__mrcdiag_patched__", False):
        return
    orig_init = ddp_cls.__init__
    orig_register = ddp_cls.register_comm_hook
    orig_builtin = ddp_cls._register_builtin_comm_hook

    @functools.wraps(orig_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        orig_init(self, *args, **kwargs)
        if _session is None:
            return
        try:
            dispatch = _DDPDispatch(self.process_group, _averages_in_collective(self))
            orig_register(self, None, dispatch.as_hook())
            self.__mrcdiag_dispatch__ = dispatch
        except Exception as exc:  # noqa: BLE001
            warn_once("ddp", f"cannot time DDP's all-reduces ({exc!r}); the job goes on")

    @functools.wraps(orig_register)
    def register_comm_hook(self: Any, state: Any, hook: Any) -> None:
        dispatch = getattr(self, "__mrcdiag_dispatch__", None)
        if dispatch is None:
            return orig_register(self, state, hook)
        if not callable(hook):
            raise TypeError("Communication hook must be callable.")
        if dispatch.user_hook is not None:
            raise RuntimeError(
                "register_comm_hook or register_builtin_comm_hook can only be called once."
            )
        dispatch.user_state, dispatch.user_hook = state, hook
        return None

    @functools.wraps(orig_builtin)
    def _register_builtin_comm_hook(self: Any, comm_hook_type: Any) -> None:
        dispatch = getattr(self, "__mrcdiag_dispatch__", None)
        if dispatch is None:
            return orig_builtin(self, comm_hook_type)
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        name = getattr(comm_hook_type, "name", str(comm_hook_type))
        python_equivalent = {
            "ALLREDUCE": default_hooks.allreduce_hook,
            "FP16_COMPRESS": default_hooks.fp16_compress_hook,
        }.get(name)
        if python_equivalent is None:
            raise ValueError(f"unknown builtin comm hook {comm_hook_type}")
        return register_comm_hook(self, self.process_group, python_equivalent)

    ddp_cls.__init__ = __init__
    ddp_cls.register_comm_hook = register_comm_hook
    ddp_cls._register_builtin_comm_hook = _register_builtin_comm_hook
    ddp_cls.__mrcdiag_patched__ = True


# --- installing the wrappers -----------------------------------------------------------
_installed = False


def install(torch: Any) -> None:
    """Wrap torch.distributed in place. Cheap and idempotent; records nothing until attach."""
    global _installed
    if _installed:
        return
    _installed = True
    dist = torch.distributed
    if not dist.is_available():
        return
    c10d = dist.distributed_c10d
    ops.bind_torch(
        lambda g: g.size() if g is not None else dist.get_world_size(),
        lambda g, r: dist.get_global_rank(g if g is not None else c10d._get_default_group(), r),
    )
    for op_name in ops.CALL_READERS:
        for module in (dist, c10d):
            orig = getattr(module, op_name, None)
            if orig is None or hasattr(orig, "__mrcdiag_wrapped__"):
                continue
            setattr(module, op_name, _wrap_collective(op_name, orig))
    # Make both namespaces share one wrapper where they shared one function.
    for op_name in ops.CALL_READERS:
        if hasattr(c10d, op_name):
            setattr(dist, op_name, getattr(c10d, op_name))
    work_cls = c10d.Work
    if not hasattr(work_cls.wait, "__mrcdiag_wrapped__"):
        work_cls.wait = _wrap_work_wait(work_cls.wait)
    try:
        import torch.distributed._functional_collectives as fc

        for name in ops.FUNCTIONAL_READERS:
            orig = getattr(fc, name, None)
            if orig is not None and not hasattr(orig, "__mrcdiag_wrapped__"):
                setattr(fc, name, _wrap_functional(name, orig))
        if not hasattr(fc.wait_tensor, "__mrcdiag_wrapped__"):
            fc.wait_tensor = _wrap_wait_tensor(fc.wait_tensor)
    except Exception as exc:  # noqa: BLE001
        warn_once("functional", f"functional collectives are not timed ({exc!r})")
    _patch_init(dist, c10d)
    for patch in (_patch_ddp_module, _patch_dataloader, _patch_optimizer):
        try:
            patch(torch)
        except Exception as exc:  # noqa: BLE001 - one missing piece must not stop the rest
            warn_once(patch.__name__, f"{patch.__name__[7:]} not instrumented ({exc!r})")


def _patch_ddp_module(torch: Any) -> None:
    from torch.nn.parallel import DistributedDataParallel

    _patch_ddp(DistributedDataParallel)


def _patch_init(dist: Any, c10d: Any) -> None:
    orig_init = c10d.init_process_group
    orig_destroy = c10d.destroy_process_group

    @functools.wraps(orig_init)
    def init_process_group(*args: Any, **kwargs: Any) -> Any:
        result = orig_init(*args, **kwargs)
        if os.environ.get("MRCDIAG_RUN_DIR"):
            from mrcdiag.agent.attach import attach

            attach()
        return result

    @functools.wraps(orig_destroy)
    def destroy_process_group(*args: Any, **kwargs: Any) -> Any:
        group = args[0] if args else kwargs.get("group")
        if group is None:
            detach()
        return orig_destroy(*args, **kwargs)

    init_process_group.__mrcdiag_wrapped__ = orig_init  # type: ignore[attr-defined]
    destroy_process_group.__mrcdiag_wrapped__ = orig_destroy  # type: ignore[attr-defined]
    for module in (dist, c10d):
        module.init_process_group = init_process_group
        module.destroy_process_group = destroy_process_group


def _patch_dataloader(torch: Any) -> None:
    try:
        from torch.utils.data.dataloader import _BaseDataLoaderIter
    except Exception:  # noqa: BLE001
        return
    orig_next = _BaseDataLoaderIter.__next__

    @functools.wraps(orig_next)
    def __next__(self: Any) -> Any:
        session = _session
        if session is None:
            return orig_next(self)
        t0 = _now()
        try:
            return orig_next(self)
        finally:
            session.steps.data_wait_ns += _now() - t0

    _BaseDataLoaderIter.__next__ = __next__


def _patch_optimizer(torch: Any) -> None:
    def on_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        session = _session
        if session is not None:
            try:
                session.steps.on_optimizer_step(optimizer, args, kwargs)
            except Exception as exc:  # noqa: BLE001
                _stop_recording("step", exc)

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(on_step)


def start_session(recorder: Recorder, dist: Any, rank: int) -> _Session:
    global _session
    session = _Session(recorder, dist, rank)
    _session = session
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
    global _session, _deferred_signal
    session, _session = _session, None
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


def current_session() -> _Session | None:
    return _session


class own_traffic:
    """Context in which collectives are ours (clock sync) and are not recorded."""

    def __enter__(self) -> None:
        self._previous = _tls.busy
        _tls.busy = True

    def __exit__(self, *exc: Any) -> None:
        _tls.busy = self._previous


_closing = False  # detach() is closing the records
_deferred_signal: int | None = None  # a SIGTERM that came meanwhile, re-sent after


def detach() -> None:
    """Stop recording and flush; called at destroy_process_group and at exit."""
    global _session, _closing, _deferred_signal
    session = _session
    _session = None
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


def rank_dir_for(run_dir: Path, rank: int) -> Path:
    return run_dir / schema.RANKS_DIR / f"rank-{rank:05d}"
