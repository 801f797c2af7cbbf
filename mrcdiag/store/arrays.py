"""Arrow arrays made from Python or numpy values without `pa.array`.

`pa.array()` imports pandas on its first call wherever pandas is installed (pyarrow checks
whether the values are a pandas object): 0.26 s of CPU and ~50 MiB in every process that
calls it. In a rank that was its writer thread's first flush, taken from the job in its
first steps (the first 10 steps of a 74 ms DDP step ran 25% slower); in the node agent,
its first sample. The columns mrcdiag writes are fixed-width numbers, booleans and
strings, which Arrow takes as plain buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

# Arrow type id -> numpy dtype (or None): numpy_of runs once per column of every rank's
# file when a run is read, 245,000 times at 4096 ranks
_DTYPE_OF_TYPE_ID: dict[int, np.dtype | None] = {}


def _numpy_dtype(type_: pa.DataType) -> np.dtype | None:
    """The numpy dtype with the same bytes as a fixed-width Arrow number type."""
    key = type_.id
    if key not in _DTYPE_OF_TYPE_ID:
        _DTYPE_OF_TYPE_ID[key] = _dtype_of(type_)
    return _DTYPE_OF_TYPE_ID[key]


def _dtype_of(type_: pa.DataType) -> np.dtype | None:
    if not (pa.types.is_integer(type_) or pa.types.is_floating(type_)):
        return None
    width = type_.bit_width // 8
    if pa.types.is_signed_integer(type_):
        return np.dtype(f"<i{width}")
    if pa.types.is_unsigned_integer(type_):
        return np.dtype(f"<u{width}")
    if pa.types.is_floating(type_) and width in (2, 4, 8):
        return np.dtype(f"<f{width}")
    return None


def arrow_array(values: Sequence[Any] | np.ndarray, type_: pa.DataType) -> pa.Array:
    """`values` as an Arrow array of `type_` (no nulls); other types, or values that do not
    fit, go through pa.array, which says what is wrong with them."""
    try:
        dtype = _numpy_dtype(type_)
        if dtype is not None:
            given = np.asarray(values)
            data = np.ascontiguousarray(given, dtype=dtype)
            # numpy casts quietly where Arrow would refuse: a value that does not survive
            # the cast (a fraction, a number out of range, None) goes to pa.array
            if given.dtype == object or (given.dtype != dtype and not np.array_equal(data, given)):
                return pa.array(values, type=type_)
            return pa.Array.from_buffers(type_, len(data), [None, pa.py_buffer(data)])
        if pa.types.is_boolean(type_):
            flags = np.asarray(values, dtype=bool)
            bits = np.packbits(flags, bitorder="little")
            return pa.Array.from_buffers(type_, len(flags), [None, pa.py_buffer(bits)])
        if pa.types.is_string(type_) and all(isinstance(v, str) for v in values):
            encoded = [v.encode("utf-8") for v in values]
            offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
            offsets[1:] = np.cumsum([len(b) for b in encoded], dtype=np.int64)
            return pa.Array.from_buffers(
                type_,
                len(encoded),
                [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
            )
    except (TypeError, ValueError, OverflowError):
        pass  # None among the values, a number out of range: pa.array says which
    return pa.array(values, type=type_)


_BOOL_ID = pa.bool_().id


def column_dtype(type_: pa.DataType) -> np.dtype:
    """The numpy dtype numpy_of gives a column of `type_` (fixed-width numbers, booleans)."""
    if type_.id == _BOOL_ID:
        return np.dtype(bool)
    dtype = _numpy_dtype(type_)
    if dtype is None:
        raise TypeError(f"no fixed-width numpy dtype for {type_}")
    return dtype


def numpy_of(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow column as numpy, read from its buffers (`to_numpy()` also imports pandas):
    fixed-width numbers without nulls as a view where the column is one chunk (read-only,
    as to_numpy's), booleans unpacked; anything else through to_numpy."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    dtype = _numpy_dtype(values.type)
    is_bool = dtype is None and values.type.id == _BOOL_ID
    if (dtype is None and not is_bool) or any(c.null_count for c in chunks):
        return values.to_numpy(zero_copy_only=False)
    if not chunks:
        return np.zeros(0, dtype=dtype if dtype is not None else bool)
    parts = []
    for c in chunks:
        data = c.buffers()[1]
        if is_bool:
            bits = (
                np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
            )
            flags = np.unpackbits(bits, bitorder="little", count=c.offset + len(c))
            parts.append(flags[c.offset :].astype(bool))
        else:
            parts.append(
                np.frombuffer(data, dtype=dtype, count=len(c), offset=c.offset * dtype.itemsize)
            )
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table of `schema` with no rows (`Schema.empty_table()` also imports pandas)."""
    return pa.Table.from_batches([], schema=schema)
