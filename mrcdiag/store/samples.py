"""A node agent's samples on disk: crash-safe each second, compact over a day.

Long form, one row per series per tick: (t_ns, name, labels "k=v,k=v", value). Written
row by row with their label strings, a day of an 8-GPU node would take about 1 GB. So
the samples go two ways:

- `samples-recent.arrows`: every tick, at once, as one uncompressed batch: a `kill -9`
  of the agent loses at most the tick being written;
- `samples.arrows`: every `block_s` seconds the recent ticks are written again as one
  block, sorted by series then time, names and labels dictionary-encoded, compressed
  with zstd (a series' consecutive values compress well together), and the recent
  file starts over.

Both are Arrow IPC streams of the same schema (each batch carries its own dictionary,
which the stream format allows), readable by pyarrow and polars as they are, and by
DuckDB through pyarrow. A reader takes the blocks, then the recent rows newer than the last block
(a crash between writing a block and restarting the recent file leaves rows in both).
benchmarks/sample_storage.py measures the bytes per day.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from mrcdiag.store.arrays import arrow_array
from mrcdiag.store.tail import read_stream
from mrcdiag.store.writer import StreamTable

# Names and labels repeat every tick: dictionary-encoded, a block stores each once (the
# offsets of plain strings took 6 of 7 bytes per value even compressed).
_WORDS = pa.dictionary(pa.int32(), pa.string())
SAMPLE_SCHEMA = pa.schema(
    [
        ("t_ns", pa.int64()),  # the node's CLOCK_MONOTONIC, like the ranks' records
        ("name", _WORDS),  # metric name (mrcdiag/metrics.py)
        ("labels", _WORDS),  # "k=v,k=v", in the order the collector gave them
        ("value", pa.float64()),
    ]
)
_PLAIN_SCHEMA = pa.schema(
    [
        f if f.name not in ("name", "labels") else pa.field(f.name, pa.string())
        for f in SAMPLE_SCHEMA
    ]
)
BLOCKS_FILE = "samples.arrows"
RECENT_FILE = "samples-recent.arrows"
DEFAULT_BLOCK_S = 300.0
_COMPRESSED = ipc.IpcWriteOptions(compression=pa.Codec("zstd", compression_level=3))


def format_labels(labels: Sequence[tuple[str, str]]) -> str:
    """The stored form of a series' labels."""
    return ",".join(f"{k}={v}" for k, v in labels)


def parse_labels(text: str) -> dict[str, str]:
    """The labels of a stored series, by key."""
    return dict(kv.split("=", 1) for kv in text.split(",") if "=" in kv)


def plain_batch(t_ns: int, rows: Sequence[tuple[str, str, float]]) -> pa.RecordBatch:
    """One tick's (name, labels, value) rows, names and labels as plain strings."""
    names, labels, values = zip(*rows, strict=True) if rows else ((), (), ())
    return pa.RecordBatch.from_arrays(
        [
            arrow_array([t_ns] * len(rows), pa.int64()),
            arrow_array(names, pa.string()),
            arrow_array(labels, pa.string()),
            arrow_array(values, pa.float64()),
        ],
        schema=_PLAIN_SCHEMA,
    )


class SampleWriter:
    """Appends ticks of samples to one node's directory; see the module docstring."""

    def __init__(self, node_dir: Path, block_s: float = DEFAULT_BLOCK_S) -> None:
        self.node_dir = node_dir
        self.block_ns = int(block_s * 1e9)
        self._blocks = StreamTable(node_dir / BLOCKS_FILE, SAMPLE_SCHEMA, _COMPRESSED)
        self._recent = StreamTable(node_dir / RECENT_FILE, SAMPLE_SCHEMA)
        self._pending: list[pa.RecordBatch] = []
        self._block_start_ns: int | None = None

    def append(self, t_ns: int, rows: Sequence[tuple[str, str, float]]) -> None:
        """One tick: (name, labels, value) rows sampled at t_ns."""
        if not rows:
            return
        plain = plain_batch(t_ns, rows)
        self._recent.append_batch(_encoded(plain))
        self._pending.append(plain)
        if self._block_start_ns is None:
            self._block_start_ns = t_ns
        elif t_ns - self._block_start_ns >= self.block_ns:
            self.write_block()

    def write_block(self) -> None:
        """Compact the recent ticks into one block and start the recent file over."""
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending, _PLAIN_SCHEMA)
        order = pc.sort_indices(
            table, [("name", "ascending"), ("labels", "ascending"), ("t_ns", "ascending")]
        )
        for batch in table.take(order).combine_chunks().to_batches():
            self._blocks.append_batch(_encoded(batch))
        self._pending = []
        self._block_start_ns = None
        self._recent.close()
        self._recent = StreamTable(self.node_dir / RECENT_FILE, SAMPLE_SCHEMA)

    def close(self) -> None:
        """Write what is pending as a last block; the recent file is left empty."""
        try:
            self.write_block()
        finally:
            self._blocks.close()
            self._recent.close()


def _encoded(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A batch of plain strings with its names and labels dictionary-encoded."""
    columns = [
        batch.column(i).dictionary_encode() if pa.types.is_string(f.type) else batch.column(i)
        for i, f in enumerate(batch.schema)
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SAMPLE_SCHEMA)


def read_samples(node_dir: Path, problems: list[str]) -> pa.Table | None:
    """Every sample of one node, blocks first, names and labels on one dictionary each;
    None when the node wrote none. What is torn or missing goes to `problems`."""
    blocks_path, recent_path = node_dir / BLOCKS_FILE, node_dir / RECENT_FILE
    if not blocks_path.exists() and not recent_path.exists():
        return None
    parts = []
    last_ns = None
    if blocks_path.exists():
        blocks = read_stream(blocks_path, SAMPLE_SCHEMA, problems)
        parts.append(blocks)
        if blocks.num_rows:
            last_ns = pc.max(blocks.column("t_ns")).as_py()
    if recent_path.exists():
        recent = read_stream(recent_path, SAMPLE_SCHEMA, problems)
        if last_ns is not None and recent.num_rows:
            recent = recent.filter(pc.greater(recent.column("t_ns"), last_ns))
        parts.append(recent)
    return pa.concat_tables(parts).unify_dictionaries().combine_chunks()


class RecentSamples:
    """A node agent's samples of the last `keep_s` seconds, in memory, for the live
    analysis (its own, or another node's through /mrcdiag/samples): one batch a tick,
    built once."""

    def __init__(self, keep_s: float) -> None:
        self.keep_ns = int(keep_s * 1e9)
        self._ticks: list[tuple[int, pa.RecordBatch]] = []

    def append(self, t_ns: int, rows: Sequence[tuple[str, str, float]]) -> None:
        self._ticks.append((t_ns, plain_batch(t_ns, rows)))
        while self._ticks and self._ticks[0][0] < t_ns - self.keep_ns:
            self._ticks.pop(0)

    def since(self, t_ns: int) -> pa.Table:
        """The samples taken after t_ns (the node's CLOCK_MONOTONIC), plain strings."""
        return pa.Table.from_batches(
            [batch for t, batch in list(self._ticks) if t > t_ns], schema=_PLAIN_SCHEMA
        )
