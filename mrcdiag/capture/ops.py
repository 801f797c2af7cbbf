"""How to read one call of each torch.distributed collective: its tensor, bytes, group.

Each reader takes the call's (args, kwargs) and returns a plain tuple (nbytes, dtype
code, group or None for the default group, is_async, peer's global rank or -1, CUDA
device index or -1): a NamedTuple would cost a Python call per collective. The positions
follow the signatures of torch.distributed in torch 2.x (checked against 2.13). Bytes
follow nccl-tests' "size": the whole buffer that crosses the group (the gathered
output for all_gather, the input for reduce_scatter and all_to_all).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mrcdiag.store.schema import DTYPE_CODE

# torch.dtype -> our code, filled the first time each dtype is seen.
_dtype_cache: dict[Any, int] = {}


def dtype_code(dtype: Any) -> int:
    code = _dtype_cache.get(dtype)
    if code is None:
        code = DTYPE_CODE.get(str(dtype).removeprefix("torch."), 0)
        _dtype_cache[dtype] = code
    return code


def cuda_index(obj: Any) -> int:
    """CUDA device index of a tensor (or of the first of a list of them); -1 otherwise."""
    if isinstance(obj, (list, tuple)):
        obj = obj[0] if obj else None
        if isinstance(obj, (list, tuple)):
            obj = obj[0] if obj else None
    if obj is None or not getattr(obj, "is_cuda", False):
        return -1
    index = obj.device.index
    return 0 if index is None else int(index)


def _sum_bytes(tensors: Any) -> int:
    return sum(t.nbytes for t in tensors)


# The readers run on every collective, so they avoid helper calls: arguments are read
# inline (`args[i] if len(args) > i else kwargs.get(name)`), bytes come from `nbytes`.
def _one(tensor_pos: int, tensor_name: str, group_pos: int, async_pos: int, scale_by_group=False):
    def read(args: tuple, kwargs: dict) -> tuple:
        n = len(args)
        tensor = args[tensor_pos] if n > tensor_pos else kwargs.get(tensor_name)
        group = args[group_pos] if n > group_pos else kwargs.get("group")
        nbytes = tensor.nbytes
        if scale_by_group:
            nbytes *= _group_size(group)
        dtype = _dtype_cache.get(tensor.dtype)
        return (
            nbytes,
            dtype_code(tensor.dtype) if dtype is None else dtype,
            group,
            bool(args[async_pos] if n > async_pos else kwargs.get("async_op", False)),
            -1,
            cuda_index(tensor) if tensor.is_cuda else -1,
        )

    return read


def _many(list_pos: int, list_name: str, group_pos: int, async_pos: int, nested: bool = False):
    def read(args: tuple, kwargs: dict) -> tuple:
        n = len(args)
        tensors = args[list_pos] if n > list_pos else kwargs.get(list_name)
        if nested:
            tensors = [t for inner in tensors for t in inner]
        return (
            _sum_bytes(tensors),
            dtype_code(tensors[0].dtype) if tensors else 0,
            args[group_pos] if n > group_pos else kwargs.get("group"),
            bool(args[async_pos] if n > async_pos else kwargs.get("async_op", False)),
            -1,
            cuda_index(tensors),
        )

    return read


def _barrier(args: tuple, kwargs: dict) -> tuple:
    n = len(args)
    return (
        0,
        0,
        args[0] if n > 0 else kwargs.get("group"),
        bool(args[1] if n > 1 else kwargs.get("async_op", False)),
        -1,
        -1,
    )


def _p2p(peer_name: str, is_async: bool):
    def read(args: tuple, kwargs: dict) -> tuple:
        n = len(args)
        tensor = args[0] if n > 0 else kwargs.get("tensor")
        peer = args[1] if n > 1 else kwargs.get(peer_name)
        group = args[2] if n > 2 else kwargs.get("group")
        if peer is None:
            group_peer = kwargs.get("group_" + peer_name)
            peer = _global_rank(group, group_peer) if group_peer is not None else -1
        return (
            tensor.nbytes,
            dtype_code(tensor.dtype),
            group,
            is_async,
            int(peer),
            cuda_index(tensor),
        )

    return read


_group_size_fn: Callable[[Any], int] | None = None
_global_rank_fn: Callable[[Any, int], int] | None = None


def bind_torch(group_size: Callable[[Any], int], global_rank: Callable[[Any, int], int]) -> None:
    """Give the readers torch's group helpers without importing torch here."""
    global _group_size_fn, _global_rank_fn
    _group_size_fn = group_size
    _global_rank_fn = global_rank


def _group_size(group: Any) -> int:
    return _group_size_fn(group) if _group_size_fn else 1


def _global_rank(group: Any, group_rank: int) -> int:
    return _global_rank_fn(group, group_rank) if _global_rank_fn else int(group_rank)


# op name -> reader of (args, kwargs); every entry is wrapped in torch.distributed.
CALL_READERS: dict[str, Callable[[tuple, dict], tuple]] = {
    "all_reduce": _one(0, "tensor", 2, 3),
    "all_gather": _many(0, "tensor_list", 2, 3),
    "all_gather_into_tensor": _one(0, "output_tensor", 2, 3),
    "reduce_scatter": _many(1, "input_list", 3, 4),
    "reduce_scatter_tensor": _one(1, "input", 3, 4),
    "broadcast": _one(0, "tensor", 2, 3),
    "reduce": _one(0, "tensor", 3, 4),
    "all_to_all": _many(1, "input_tensor_list", 2, 3),
    "all_to_all_single": _one(1, "input", 4, 5),
    "all_gather_single": _one(0, "output_tensor", 2, 3),
    "reduce_scatter_single": _one(1, "input", 3, 4),
    "all_reduce_coalesced": _many(0, "tensors", 2, 3),
    "all_gather_coalesced": _many(0, "output_tensor_lists", 2, 3, nested=True),
    "barrier": _barrier,
    "gather": _one(0, "tensor", 3, 4, scale_by_group=True),
    "scatter": _one(0, "tensor", 3, 4, scale_by_group=True),
    "send": _p2p("dst", False),
    "recv": _p2p("src", False),
    "isend": _p2p("dst", True),
    "irecv": _p2p("src", True),
}


# The functional collectives (torch.distributed._functional_collectives) that issue one:
# each is wrapped in a window in which capture/dispatch.py records the c10d op its C++
# implementation issues, so that no reader is needed here. Names torch 2.13 does not
# have are skipped.
FUNCTIONAL_COLLECTIVES: tuple[str, ...] = (
    "broadcast",
    "all_reduce",
    "all_reduce_coalesced",
    "all_gather_single",
    "all_gather_single_autograd",
    "all_gather_single_coalesced",
    "reduce_scatter_single",
    "reduce_scatter_single_autograd",
    "reduce_scatter_single_coalesced",
    "all_to_all_single",
    "all_to_all_single_autograd",
    "permute_tensor",
)
# Deprecated names that call one of the above through the module (torch 2.13): wrapped
# only on a torch without the name they call, so that their FutureWarning still points
# at the caller and nothing is windowed twice.
FUNCTIONAL_ALIASES: dict[str, str] = {
    "all_gather_tensor": "all_gather_single",
    "all_gather_tensor_autograd": "all_gather_single_autograd",
    "reduce_scatter_tensor": "reduce_scatter_single",
    "reduce_scatter_tensor_autograd": "reduce_scatter_single_autograd",
    "all_gather_into_tensor_coalesced": "all_gather_single_coalesced",
    "reduce_scatter_tensor_coalesced": "reduce_scatter_single_coalesced",
}
