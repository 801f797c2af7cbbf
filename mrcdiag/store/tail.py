"""Reading Arrow streams that another process appends to, or appended to until it died.

`read_stream` reads every complete batch of a stream and notes a torn tail; `StreamTail`
follows a stream as it grows (the node agent reads the ranks' segments batch by batch
from the byte offset where it stopped; a batch still being written waits for the next
call).
"""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from mrcdiag.store.allocator import libc_function
from mrcdiag.store.arrays import arrow_array, empty_table


def read_stream(
    path: Path, schema_: pa.Schema, problems: list[str], mapped: list[MappedPages] | None = None
) -> pa.Table:
    """Every complete batch of an Arrow stream; a torn tail is noted, not fatal.

    `mapped`: the table's columns are the file's own pages (memory-mapped, zero-copy),
    not a copy on the heap, and the mapping is added to this list: reading costs no
    memory until a column is read, the pages that were read can be let go while the
    table is kept (`MappedPages.drop`: read again, from the page cache, when next
    used), and all of them go back when the table is let go (the report reads
    thousands of rank files and copies each once into the run's columns). For files
    that are only appended to, as the rank streams are."""
    if not path.exists():
        problems.append(f"{path} is missing")
        return empty_table(schema_)
    batches: list[pa.RecordBatch] = []
    try:
        with _mapped(path, mapped) if mapped is not None else pa.OSFile(str(path), "rb") as source:
            reader = ipc.open_stream(source)
            while True:
                try:
                    batches.append(reader.read_next_batch())
                except StopIteration:
                    break
    except (pa.ArrowInvalid, OSError, EOFError) as exc:
        if path.stat().st_size > 0 or batches:
            problems.append(
                f"{path} is truncated after {sum(b.num_rows for b in batches)} rows "
                f"({str(exc).splitlines()[0]}); the rows before it are used"
            )
    if not batches:
        return empty_table(schema_)
    table = pa.Table.from_batches(batches)
    if table.schema != schema_:
        table = _fill_missing(table, schema_).cast(schema_)
    return table


class MappedPages:
    """The pages of a memory-mapped file, which can be let go while the mapping stays (the
    file's contents stay too: they are read again from the page cache when next used).
    The kernel maps up to 64 KiB around each page a reader touches, so reading a few
    columns of thousands of rank files held most of them in the report's memory (3.2 GB
    at 16384 ranks) until they were joined."""

    def __init__(self, whole: pa.Buffer) -> None:
        self.whole = whole  # the file's buffer: the mapping lives while it does

    def drop(self) -> None:
        if _madvise is None or not self.whole.size:
            return
        _madvise(self.whole.address, self.whole.size, mmap.MADV_DONTNEED)


def _libc_madvise() -> Any:
    """libc's madvise(address, length, advice), where there is one to call."""
    madvise = libc_function("madvise")
    if madvise is None or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _libc_madvise()


def _mapped(path: Path, mapped: list[MappedPages]) -> pa.BufferReader:
    """A reader over the file's own pages, which are added to `mapped`. The file is
    closed at once (the mapping needs no descriptor: thousands of rank files are
    mapped at a time)."""
    with pa.memory_map(str(path), "r") as source:
        whole = source.read_buffer()
    mapped.append(MappedPages(whole))
    return pa.BufferReader(whole)


def _fill_missing(table: pa.Table, schema_: pa.Schema) -> pa.Table:
    """A run written before a column existed gets it as -1 (integers: not known) or null,
    in the schema's order."""
    columns = []
    for field in schema_:
        if field.name in table.column_names:
            columns.append(table.column(field.name))
        elif pa.types.is_integer(field.type):
            columns.append(arrow_array(np.full(table.num_rows, -1), field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.table(columns, schema=schema_)


class StreamTail:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.schema: pa.Schema | None = None

    def read_new(self) -> list[pa.RecordBatch]:
        """Complete batches appended since the last call (none if the file is missing)."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size <= self.offset:
            return []
        out: list[pa.RecordBatch] = []
        with pa.OSFile(str(self.path), "rb") as f:
            if self.schema is None and self.offset > 0:  # resumed from a cursor
                try:
                    self.schema = ipc.read_schema(ipc.read_message(f))
                except (pa.ArrowInvalid, OSError, EOFError):
                    return []
            f.seek(self.offset)
            while True:
                start = f.tell()
                try:
                    message = ipc.read_message(f)
                except (pa.ArrowInvalid, OSError, EOFError):
                    f.seek(start)
                    break
                if message is None:
                    break
                if message.type == "schema":
                    self.schema = ipc.read_schema(message)
                elif message.type == "record batch" and self.schema is not None:
                    out.append(ipc.read_record_batch(message, self.schema))
                self.offset = f.tell()
        return out
