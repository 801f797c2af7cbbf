"""Putting the wrappers in place: torch.distributed, DDP, the DataLoader, the optimizer.

`install` runs once per process, when the script imports torch (under `mrcdiag launch`)
or at `mrcdiag.attach()`. It only swaps functions; nothing is recorded until a session
starts (capture/lifecycle.py).
"""

from __future__ import annotations

import functools
import sys
import time
import types
from collections.abc import Callable
from typing import Any

from mrcdiag.capture import dispatch, ops
from mrcdiag.capture.ddp import patch_ddp
from mrcdiag.capture.lifecycle import detach
from mrcdiag.capture.wrappers import (
    current_session,
    mark_wrapper,
    stop_recording,
    wrap_batch_p2p,
    wrap_collective,
    wrap_functional,
    wrap_wait_tensor,
    wrap_work_wait,
)
from mrcdiag.log import warn_once

_now = time.monotonic_ns

_installed = False
_on_init: Callable[[], Any] | None = None


def install(torch: Any, on_init: Callable[[], Any] | None = None) -> None:
    """Wrap torch.distributed in place. Cheap and idempotent; records nothing until attach.

    `on_init` runs after every successful `init_process_group` (the launcher's workers
    attach there); the first call's `on_init` is the one kept.
    """
    global _installed, _on_init
    if _installed:
        return
    _installed = True
    _on_init = on_init
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
            setattr(module, op_name, wrap_collective(op_name, orig))
    batch = getattr(c10d, "batch_isend_irecv", None)
    if batch is not None and not hasattr(batch, "__mrcdiag_wrapped__"):
        c10d.batch_isend_irecv = wrap_batch_p2p(batch)
    # Make both namespaces share one wrapper where they shared one function.
    for op_name in (*ops.CALL_READERS, "batch_isend_irecv"):
        if hasattr(c10d, op_name):
            setattr(dist, op_name, getattr(c10d, op_name))
    work_cls = c10d.Work
    if not hasattr(work_cls.wait, "__mrcdiag_wrapped__"):
        work_cls.wait = wrap_work_wait(work_cls.wait)
    try:
        import torch.distributed._functional_collectives as fc

        aliases = [a for a, target in ops.FUNCTIONAL_ALIASES.items() if not hasattr(fc, target)]
        for name in (*ops.FUNCTIONAL_COLLECTIVES, *aliases):
            orig = getattr(fc, name, None)
            if orig is not None and not hasattr(orig, "__mrcdiag_wrapped__"):
                setattr(fc, name, wrap_functional(name, orig))
        if not hasattr(fc.wait_tensor, "__mrcdiag_wrapped__"):
            fc.wait_tensor = wrap_wait_tensor(fc.wait_tensor)
    except Exception as exc:
        warn_once("functional", f"functional collectives are not timed ({exc!r})")
    dispatch.register(torch)
    _patch_init(dist, c10d)
    for patch in (_patch_ddp_module, _patch_dataloader, _patch_optimizer):
        try:
            patch(torch)
        except Exception as exc:  # one missing piece must not stop the rest
            warn_once(patch.__name__, f"{patch.__name__[7:]} not instrumented ({exc!r})")
    try:
        _rebind_early_imports(dist, c10d)
    except Exception as exc:
        warn_once("rebind", f"modules imported before mrcdiag keep torch's functions ({exc!r})")


def _rebind_early_imports(dist: Any, c10d: Any) -> None:
    """Modules that did `from torch.distributed import init_process_group` (or a
    collective) before we were installed hold the unwrapped function: torch's own
    device_mesh.py does so at import, so a job set up only by `init_device_mesh` would
    never attach. Point every such module-level name at our wrapper."""
    namespaces = [dist, c10d]
    try:
        import torch.distributed._functional_collectives as fc

        namespaces.append(fc)
    except Exception:
        pass
    wrapper_of: dict[int, tuple[Any, Any]] = {}
    for namespace in namespaces:
        for value in list(vars(namespace).values()):
            if type(value) is not types.FunctionType:
                continue
            orig = getattr(value, "__mrcdiag_wrapped__", None)
            if orig is not None:
                wrapper_of[id(orig)] = (orig, value)
    for module in list(sys.modules.values()):
        if module is None or getattr(module, "__name__", "").startswith("mrcdiag"):
            continue
        try:
            items = list(vars(module).items())
        except TypeError:
            continue
        for name, value in items:
            found = wrapper_of.get(id(value))
            if found is not None and found[0] is value:
                setattr(module, name, found[1])


def _patch_ddp_module(torch: Any) -> None:
    from torch.nn.parallel import DistributedDataParallel

    patch_ddp(DistributedDataParallel)


def _patch_init(dist: Any, c10d: Any) -> None:
    orig_init = c10d.init_process_group
    orig_destroy = c10d.destroy_process_group

    @functools.wraps(orig_init)
    def init_process_group(*args: Any, **kwargs: Any) -> Any:
        result = orig_init(*args, **kwargs)
        if _on_init is not None:
            _on_init()
        return result

    @functools.wraps(orig_destroy)
    def destroy_process_group(*args: Any, **kwargs: Any) -> Any:
        group = args[0] if args else kwargs.get("group")
        if group is None:
            detach()
        return orig_destroy(*args, **kwargs)

    mark_wrapper(init_process_group, orig_init)
    mark_wrapper(destroy_process_group, orig_destroy)
    for module in (dist, c10d):
        module.init_process_group = init_process_group
        module.destroy_process_group = destroy_process_group


def _patch_dataloader(torch: Any) -> None:
    """The training thread's wait for its data: in each batch's __next__, and in
    DataLoader.__iter__, where an epoch begins by starting the worker processes and
    waiting for their first batches (every epoch, unless persistent_workers=True)."""
    try:
        from torch.utils.data.dataloader import DataLoader, _BaseDataLoaderIter
    except Exception:
        return
    _BaseDataLoaderIter.__next__ = _timed_as_data_wait(_BaseDataLoaderIter.__next__)
    DataLoader.__iter__ = _timed_as_data_wait(DataLoader.__iter__)


def _timed_as_data_wait(orig: Any) -> Any:
    @functools.wraps(orig)
    def timed(self: Any) -> Any:
        session = current_session()
        if session is None:
            return orig(self)
        t0 = _now()
        try:
            return orig(self)
        finally:
            session.steps.data_wait_ns += _now() - t0

    return timed


def _patch_optimizer(torch: Any) -> None:
    def on_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        session = current_session()
        if session is not None:
            try:
                session.steps.on_optimizer_step(optimizer, args, kwargs)
            except Exception as exc:
                stop_recording("step", exc)

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(on_step)
