"""Append-only writers for one rank's part of the run directory.

Each table is an Arrow IPC *stream*: a schema, then record batches, each flushed to the
file as soon as it is written. A process killed with SIGKILL leaves every complete batch
readable; the reader stops at a torn last batch and says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from mrcdiag.store.arrays import arrow_array


class StreamTable:
    """One Arrow IPC stream file that grows by whole batches."""

    def __init__(
        self, path: Path, schema: pa.Schema, options: ipc.IpcWriteOptions | None = None
    ) -> None:
        self.path = path
        self.schema = schema
        self._file = open(path, "wb")  # closed by close()
        self._writer = ipc.new_stream(self._file, schema, options=options)
        self._file.flush()

    def append_batch(self, batch: pa.RecordBatch) -> None:
        """Write one batch of this table's schema and push it to the OS."""
        self._writer.write_batch(batch)
        self._file.flush()

    def append_rows(self, rows: Sequence[tuple]) -> None:
        """Write rows (tuples in schema order) as one batch and push it to the OS."""
        if not rows:
            return
        columns = list(zip(*rows, strict=True))
        arrays = [
            arrow_array(column, field.type)
            for column, field in zip(columns, self.schema, strict=True)
        ]
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
        self._file.flush()

    def append_columns(self, columns: dict[str, Any]) -> None:
        """Write whole columns (arrays by field name) as one batch."""
        arrays = [arrow_array(columns[f.name], f.type) for f in self.schema]
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.schema))
        self._file.flush()

    def close(self) -> None:
        try:
            self._writer.close()
        finally:
            self._file.close()


class JsonLines:
    """A small append-only log of JSON objects, one a line, flushed at each write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # closed by close()

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Replace a JSON file in one rename so that a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
