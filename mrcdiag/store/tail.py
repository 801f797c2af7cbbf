"""Following an Arrow stream that another process is still appending to.

The node agent reads the ranks' segments as they grow, batch by batch, from the byte
offset where it stopped; a batch still being written is left for the next call.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc


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
