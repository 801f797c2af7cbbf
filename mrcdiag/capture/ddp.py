"""DDP's gradient all-reduces, seen through a comm hook.

DDP issues its all-reduces from C++ (the reducer), out of reach of the Python wrappers.
Every DDP module built while a rank is attached gets our comm hook, which issues the
all-reduce through the wrapped Python API (so the wrappers record it, marked as DDP's),
or runs the user's own hook if one is registered later: `register_comm_hook` and the
builtin hooks are redirected to run inside ours.
"""

from __future__ import annotations

import functools
from typing import Any

from mrcdiag.capture.dispatch import arm_one_shot, window
from mrcdiag.capture.wrappers import DDP_SOURCE, current_session, mark_wrapper
from mrcdiag.capture.wrappers import thread_state as _tls
from mrcdiag.log import warn_once


class _DDPDispatch:
    """Our comm hook on a DDP module: runs the user's hook if one was registered."""

    def __init__(
        self,
        process_group: Any,
        average_in_collective: bool = False,
        reduces_unused_map: bool = False,
    ) -> None:
        self.process_group = process_group
        # DDP's reducer all-reduces its unused-parameter bitmap right after the last
        # bucket's hook returns (find_unused_parameters without static_graph).
        self.reduces_unused_map = reduces_unused_map
        self.average_in_collective = average_in_collective  # ReduceOp.AVG: gloo, NCCL
        self.user_state: Any = None
        self.user_hook: Any = None
        self.avg_refused = False  # set when the backend refuses ReduceOp.AVG once

    def as_hook(self) -> Any:
        """A plain function, as DDP wants: named, and with no annotation on `bucket`."""

        # No annotations on purpose: DDP rejects a hook whose `bucket` is annotated with
        # anything but dist.GradBucket, and this module postpones annotations as strings.
        def mrcdiag_comm_hook(state, bucket):
            return self.run(bucket)

        return mrcdiag_comm_hook

    def run(self, bucket: Any) -> Any:
        previous = _tls.source
        _tls.source = DDP_SOURCE
        try:
            if self.user_hook is not None:
                return self.user_hook(self.user_state, bucket)
            if self.average_in_collective:
                return self._average_in_collective(bucket)
            return _torch_allreduce_hook(self.process_group, bucket)
        finally:
            _tls.source = previous
            if self.reduces_unused_map and bucket.is_last():
                arm_one_shot(DDP_SOURCE)

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
    except Exception:  # when unsure, torch's own hook
        return False
    if on_gpu:
        return "nccl" in backend
    return backend == "gloo" or "cpu:gloo" in backend


def _in_ddp_window(orig: Any) -> Any:
    @functools.wraps(orig)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        with window(DDP_SOURCE):
            return orig(self, *args, **kwargs)

    return mark_wrapper(method, orig)


def patch_ddp(ddp_cls: Any) -> None:
    """Give every DDP module built from now on our comm hook (idempotent)."""
    if getattr(ddp_cls, "__mrcdiag_patched__", False):
        return
    orig_init = ddp_cls.__init__
    orig_register = ddp_cls.register_comm_hook
    orig_builtin = ddp_cls._register_builtin_comm_hook

    @functools.wraps(orig_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        # DDP's start-up collectives (the parameter-shape check, the broadcast of
        # parameters and buffers) are issued from C++: recorded in this window.
        with window(DDP_SOURCE):
            orig_init(self, *args, **kwargs)
        if current_session() is None:
            return
        try:
            dispatch = _DDPDispatch(
                self.process_group,
                _averages_in_collective(self),
                bool(getattr(self, "find_unused_parameters", False))
                and not bool(getattr(self, "static_graph", False)),
            )
            orig_register(self, None, dispatch.as_hook())
            self.__mrcdiag_dispatch__ = dispatch
        except Exception as exc:
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
    # The bucket rebuild after the first iteration and the buffer broadcasts
    # (broadcast_buffers) run from DDP's pre- and post-forward, in C++.
    for name in ("_pre_forward", "_post_forward"):
        orig = getattr(ddp_cls, name, None)
        if orig is not None:
            setattr(ddp_cls, name, _in_ddp_window(orig))
    ddp_cls.register_comm_hook = register_comm_hook
    ddp_cls._register_builtin_comm_hook = _register_builtin_comm_hook
    ddp_cls.__mrcdiag_patched__ = True
