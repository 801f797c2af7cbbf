"""Collectives issued from C++, seen at the dispatcher: DDP's own and the functional ones.

Every process-group call in torch 2.x, whoever makes it, goes through a dispatcher op
of the `c10d` namespace (`c10d::allreduce_`, `c10d::broadcast_`, ...): the Python API,
DDP's reducer (the unused-parameter bitmap, bucket rebuilds), `_broadcast_coalesced`
(start-up and buffer broadcasts), `_verify_params_across_processes`, and the C++
functional collectives behind `torch.distributed._functional_collectives` (DTensor,
tensor parallel, FSDP2's `full_tensor()`). The Python wrappers see only the first.

A kernel of ours sits on those ops at the `PreDispatch` key, which is normally in no
dispatch key set and has a fallthrough for every other op, so it costs nothing until we
put the key into this thread's included set. We do so only around the C++ calls we want
to see (`window(source)`): DDP's constructor and its pre/post-forward, the functional
collectives' Python entry points, and, as a one-shot, the moment after DDP's last
gradient bucket when the reducer all-reduces its unused-parameter bitmap. A call that
our Python wrappers already record (thread_state.busy) passes straight through, so
nothing is counted twice and the hot path of the Python API pays nothing.

The kernel reads the op's arguments by position (the schemas of torch 2.13, listed in
`_READERS`), records one row like the wrappers do, and completes it from the returned
Work's future, so a result tensor that is re-wrapped before its wait (DTensor's
AsyncCollectiveTensor) still completes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mrcdiag.capture import ops
from mrcdiag.capture import wrappers as _w
from mrcdiag.capture.wrappers import stop_recording
from mrcdiag.log import warn_once
from mrcdiag.store import schema

_now = time.monotonic_ns
_tls = _w.thread_state
_FUNCTIONAL = schema.SOURCE_CODE["functional"]
NO_WINDOW = -1


# Set when the kernels are registered: torch._C._dispatch_tls_set_dispatch_key_included
# bound to PreDispatch. Until then windows only set the thread-local source.
_include: Callable[[bool], None] = lambda on: None  # noqa: E731
_library: Any = None  # the torch.library.Library holding our kernels; kept alive here


class window:
    """Within this context, collectives issued from C++ on this thread are recorded as
    coming from `source` (a schema.SOURCE_CODE). Re-entrant; cheap when nothing runs."""

    __slots__ = ("source", "previous")

    def __init__(self, source: int) -> None:
        self.source = source

    def __enter__(self) -> None:
        self.previous = _tls.window
        _tls.window = self.source
        if self.previous == NO_WINDOW:
            _include(True)

    def __exit__(self, *exc: Any) -> None:
        _tls.window = self.previous
        if self.previous == NO_WINDOW:
            _include(False)


def arm_one_shot(source: int) -> None:
    """Record the next collective this thread issues from C++ (and only that one) as
    `source`: what DDP's reducer issues right after its last bucket."""
    if _tls.window == NO_WINDOW:
        _tls.window = source
        _tls.one_shot = True
        _include(True)


def _disarm() -> None:
    _tls.window = NO_WINDOW
    _tls.one_shot = False
    _include(False)


# --- reading the c10d ops' arguments ----------------------------------------------------
# Each reader takes the op's positional arguments and returns (nbytes, tensor for dtype
# and device or None, group position, peer position or -1). Bytes follow the wrappers'
# convention (store/schema.py): the gathered output for all-gathers, the input for
# reduce-scatters and all-to-alls.
def _flat(tensors: Any) -> list:
    out: list = []
    for t in tensors:
        if isinstance(t, (list, tuple)):
            out.extend(t)
        else:
            out.append(t)
    return out


def _bytes_of(pos: int, scale: bool = False):
    def read(args: tuple) -> tuple[int, Any]:
        value = args[pos]
        tensors = _flat(value) if isinstance(value, (list, tuple)) else [value]
        nbytes = sum(t.nbytes for t in tensors)
        return nbytes, (tensors[0] if tensors else None)

    return read


# c10d op -> (our op name, bytes reader, position of the process group, of the peer)
_READERS: dict[str, tuple[str, Callable[[tuple], tuple[int, Any]], int, int]] = {
    "allreduce_": ("all_reduce", _bytes_of(0), 1, -1),
    "allreduce_coalesced_": ("all_reduce_coalesced", _bytes_of(0), 1, -1),
    "broadcast_": ("broadcast", _bytes_of(0), 1, -1),
    "reduce_": ("reduce", _bytes_of(0), 1, -1),
    "allgather_": ("all_gather", _bytes_of(0), 2, -1),
    "_allgather_base_": ("all_gather_into_tensor", _bytes_of(0), 2, -1),
    "allgather_coalesced_": ("all_gather_coalesced", _bytes_of(0), 2, -1),
    "allgather_into_tensor_coalesced_": ("all_gather_into_tensor_coalesced", _bytes_of(0), 2, -1),
    "reduce_scatter_": ("reduce_scatter", _bytes_of(1), 2, -1),
    "_reduce_scatter_base_": ("reduce_scatter_tensor", _bytes_of(1), 2, -1),
    "reduce_scatter_tensor_coalesced_": ("reduce_scatter_tensor_coalesced", _bytes_of(1), 2, -1),
    "alltoall_": ("all_to_all", _bytes_of(1), 2, -1),
    "alltoall_base_": ("all_to_all_single", _bytes_of(1), 2, -1),
    "gather_": ("gather", _bytes_of(1), 2, -1),  # x group size, as the wrappers count
    "scatter_": ("scatter", _bytes_of(0), 2, -1),
    "barrier": ("barrier", lambda args: (0, None), 1, -1),
    "monitored_barrier_": ("barrier", lambda args: (0, None), 1, -1),
    "send": ("send", _bytes_of(0), 1, 2),
    "recv_": ("recv", _bytes_of(0), 1, 2),
    "recv_any_source_": ("recv", _bytes_of(0), 1, -1),
}


# Coalesced ops of one tensor (what the functional all-gather and reduce-scatter issue
# for a single tensor) are named as the single op they are.
_SINGLE = {
    "allreduce_coalesced_": "all_reduce",
    "allgather_into_tensor_coalesced_": "all_gather_into_tensor",
    "reduce_scatter_tensor_coalesced_": "reduce_scatter_tensor",
}


def _make_kernel(torch: Any, c10d_op: str) -> Callable[..., Any]:
    op_name, read, group_pos, peer_pos = _READERS[c10d_op]
    code = schema.OP_CODE[op_name]
    single_code = schema.OP_CODE[_SINGLE[c10d_op]] if c10d_op in _SINGLE else code
    is_p2p = op_name in schema.POINT_TO_POINT_OPS
    op = getattr(torch.ops.c10d, c10d_op).default
    pre_dispatch = torch._C.DispatchKey.PreDispatch
    unbox_group = torch._C._distributed_c10d.ProcessGroup.unbox
    unbox_work = torch._C._distributed_c10d.Work.unbox
    dist = torch.distributed

    def kernel(keyset: Any, *args: Any) -> Any:
        keyset = keyset.remove(pre_dispatch)
        tls = _tls
        source = tls.window
        session = _w._session
        if source == NO_WINDOW or tls.busy or session is None:
            if source == NO_WINDOW:
                _include(False)  # left included by someone: take it out
            return op.redispatch(keyset, *args)
        if tls.one_shot:
            _disarm()
        t_arrive = _now()
        try:
            nbytes, first = read(args)
            pg = unbox_group(args[group_pos])
            group = session.group(pg)
            if c10d_op in ("gather_", "scatter_"):
                nbytes *= group.size
            peer = -1
            if peer_pos >= 0:
                peer = int(dist.get_global_rank(pg, int(args[peer_pos])))
            seq = group.next_seq(is_p2p)
            dtype = ops.dtype_code(first.dtype) if first is not None else 0
            device = ops.cuda_index(first) if first is not None else -1
            op_code = single_code if len(args[0]) == 1 else code
            head = (op_code, source, group.index, seq, peer, nbytes, dtype, True, t_arrive)
            start_event = session.start_on_device(device)
        except Exception as exc:
            stop_recording("c10d " + c10d_op, exc)
            return op.redispatch(keyset, *args)
        tls.busy = True
        try:
            out = op.redispatch(keyset, *args)
        finally:
            tls.busy = False
        try:
            work = out[-1] if isinstance(out, tuple) else out
            session.steps.n_collectives += 1
            if work is None:  # monitored_barrier: done when it returns
                session.add_record(head + (_now(), session.steps.index), start_event, device)
            else:
                keys = ()
                if source == _FUNCTIONAL:  # waited on by wait_tensor of an output
                    keys = tuple(t.untyped_storage().data_ptr() for t in _flat(args[0]))
                _w.track_async(session, unbox_work(work), head, start_event, device, keys)
        except Exception as exc:
            stop_recording("c10d " + c10d_op, exc)
        return out

    return kernel


def register(torch: Any) -> bool:
    """Put our kernel on every c10d collective op at PreDispatch. False (with one
    warning) where this torch lacks what it needs: then only the Python API and DDP's
    gradient buckets are recorded."""
    global _library, _include
    if _library is not None:
        return True
    try:
        key = torch._C.DispatchKey.PreDispatch
        set_included = torch._C._dispatch_tls_set_dispatch_key_included
        library = torch.library.Library("c10d", "IMPL")
        for c10d_op in _READERS:
            if hasattr(torch.ops.c10d, c10d_op):
                library.impl(c10d_op, _make_kernel(torch, c10d_op), "PreDispatch", with_keyset=True)
    except Exception as exc:
        warn_once(
            "dispatch",
            f"collectives issued from C++ (DDP's own, functional) are not recorded ({exc!r})",
        )
        return False
    _library = library
    _include = lambda on: set_included(key, on)  # noqa: E731
    return True
