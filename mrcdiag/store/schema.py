"""The rows of a run directory: column types, field positions and code tables.

Writers (the capture layer, the node agent, the synthetic generator) and the reader share
these definitions so that the two sides cannot drift apart. Codes are stored as small
integers in the hot path and turned back into names when read. Where the files are:
store/layout.py; the JSON metadata: store/records.py.
"""

from __future__ import annotations

import pyarrow as pa

# Order matters: the index is the code written to disk. Append only.
OPS: tuple[str, ...] = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "broadcast",
    "reduce",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "send",
    "recv",
    "isend",
    "irecv",
    "batch_isend_irecv",
    "gather",
    "scatter",
    "all_reduce_coalesced",
    "all_gather_into_tensor_coalesced",
    "reduce_scatter_tensor_coalesced",
    "all_gather_single",
    "reduce_scatter_single",
    "all_gather_coalesced",
)
OP_CODE: dict[str, int] = {name: i for i, name in enumerate(OPS)}
POINT_TO_POINT_OPS = frozenset({"send", "recv", "isend", "irecv", "batch_isend_irecv"})

# Who issued the collective: user Python code, DDP's reducer (through our comm hook),
# or a functional collective (FSDP2, tensor parallel, torch.compile).
SOURCES: tuple[str, ...] = ("python", "ddp", "functional")
SOURCE_CODE: dict[str, int] = {name: i for i, name in enumerate(SOURCES)}

DTYPES: tuple[str, ...] = (
    "unknown",
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "float8_e4m3fn",
    "float8_e5m2",
    "complex64",
    "complex128",
)
DTYPE_CODE: dict[str, int] = {name: i for i, name in enumerate(DTYPES)}


# busbw = algbw * factor(n), as nccl-tests defines it.
def busbw_factor(op: str, group_size: int) -> float:
    n = max(group_size, 1)
    if op in ("all_reduce", "all_reduce_coalesced"):
        return 2.0 * (n - 1) / n
    if op in (
        "all_gather",
        "all_gather_into_tensor",
        "all_gather_into_tensor_coalesced",
        "all_gather_single",
        "all_gather_coalesced",
        "reduce_scatter",
        "reduce_scatter_single",
        "reduce_scatter_tensor",
        "reduce_scatter_tensor_coalesced",
        "all_to_all",
        "all_to_all_single",
    ):
        return (n - 1) / n
    return 1.0


COLLECTIVE_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("op", pa.uint8()),
    ("source", pa.uint8()),
    ("group", pa.int32()),  # index into this rank's groups.jsonl
    ("seq", pa.int64()),  # per group: collectives and p2p counted apart
    ("peer", pa.int32()),  # global rank of the peer for p2p, else -1
    ("nbytes", pa.int64()),  # nccl-tests "size": the whole buffer
    ("dtype", pa.uint8()),
    ("is_async", pa.bool_()),
    ("t_arrive_ns", pa.int64()),  # this rank's CLOCK_MONOTONIC at the call
    ("t_end_ns", pa.int64()),  # when it completed; 0 when never observed
    ("step", pa.int32()),
)
COLLECTIVE_SCHEMA = pa.schema(COLLECTIVE_FIELDS)


# the step columns of the device allocator (-1: not known)
STEP_MEMORY_FIELDS = (
    "mem_allocated_bytes",
    "mem_reserved_bytes",
    "mem_peak_allocated_bytes",
    "mem_peak_reserved_bytes",
    "mem_alloc_retries",
    "mem_ooms",
    "mem_total_bytes",
)


class CollectiveRow:
    """Positions in a collective row, the tuple the capture layer builds per call
    (COLLECTIVE_SCHEMA order). The first HEAD fields are known at the call; a row is
    `head + (t_end_ns, step)`. tests/test_store_vocabulary.py checks them against the
    schema."""

    OP, SOURCE, GROUP, SEQ, PEER, NBYTES, DTYPE, IS_ASYNC, T_ARRIVE_NS, T_END_NS, STEP = range(11)
    HEAD = T_END_NS


STEP_SCHEMA = pa.schema(
    [
        ("step", pa.int32()),
        ("t_start_ns", pa.int64()),
        ("t_end_ns", pa.int64()),
        ("data_wait_ns", pa.int64()),  # blocked in DataLoader.__next__
        ("comm_ns", pa.int64()),  # blocked in collectives (sync calls and wait())
        ("n_collectives", pa.int32()),
        # the stepping thread's own clocks over the step (Linux schedstat): on a CPU, and
        # waiting in a run queue for one; -1 where not known (older runs, no schedstat)
        ("cpu_ns", pa.int64()),
        ("cpu_wait_ns", pa.int64()),
        # how long the process's cgroup was held by its CPU limit over the step (CFS
        # bandwidth control: a container's CPU limit; capture/cgroup_cpu.py): 0 where
        # no limit applies, -1 where not known
        ("cpu_throttled_ns", pa.int64()),
        # the rank's device allocator at the step's end (torch.cuda.memory_stats; the
        # same on ROCm builds); -1 where not known (no GPU, CUDA not initialized, older
        # runs). Retries and OOMs count from the process's start.
        ("mem_allocated_bytes", pa.int64()),
        ("mem_reserved_bytes", pa.int64()),
        ("mem_peak_allocated_bytes", pa.int64()),
        ("mem_peak_reserved_bytes", pa.int64()),
        ("mem_alloc_retries", pa.int64()),
        ("mem_ooms", pa.int64()),
        ("mem_total_bytes", pa.int64()),  # the device's memory
    ]
)
