"""The recent window of a running job's records, kept in memory for the live analysis.

Ranks append to their files; a `DirTail` follows the rank directories of one node and
turns what is new into `RankDelta`s (each record is read once). A `RunWindow` folds
deltas in (from the local disk, or from other nodes' agents over HTTP, as bytes made by
`encode_deltas`) and keeps each rank's last `keep_steps` steps; `run_data()` hands the
analyzers an ordinary `RunData` of that window, its steps renumbered from 0 (the offset
comes with it), so that the live analysis is the post-run analysis on fewer steps.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from mrcdiag.store import layout, schema
from mrcdiag.store.arrays import arrow_array, empty_table, numpy_of
from mrcdiag.store.reader import RankPart, RunData, assemble
from mrcdiag.store.records import Event, GroupMeta, RankMeta, RunMeta, WorldMeta
from mrcdiag.store.tail import StreamTail

# Events other than these are rare (attach, close, drops); an in_collective event is
# written once per stuck collective. A window keeps the last few of each rank.
KEEP_EVENTS = 64


@dataclass
class RankDelta:
    """What one rank wrote since the last delta: its metadata (always), new group and
    event lines, and new rows."""

    meta: RankMeta
    groups: list[GroupMeta]
    events: list[Event]
    collectives: pa.Table
    steps: pa.Table


class LineTail:
    """Complete lines appended to a text file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        out = []
        for line in chunk[: end + 1].splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue  # torn by a crash mid-line; the post-run reader reports it
            if isinstance(value, dict):
                out.append(value)
        return out


class _RankFiles:
    def __init__(self, rank_dir: Path, meta: RankMeta) -> None:
        self.meta = meta
        self.groups = LineTail(rank_dir / layout.GROUPS_FILE)
        self.events = LineTail(rank_dir / layout.EVENTS_FILE)
        self.collectives = StreamTail(rank_dir / layout.COLLECTIVES_FILE)
        self.steps = StreamTail(rank_dir / layout.STEPS_FILE)

    def read_new(self) -> RankDelta:
        groups = []
        for line in self.groups.read_new():
            try:
                groups.append(GroupMeta.from_json(line))
            except (KeyError, ValueError, TypeError):
                continue
        return RankDelta(
            meta=self.meta,
            groups=groups,
            events=[Event.from_json(e) for e in self.events.read_new()],
            collectives=_table(self.collectives.read_new(), schema.COLLECTIVE_SCHEMA),
            steps=_table(self.steps.read_new(), schema.STEP_SCHEMA),
        )


def _table(batches: list[pa.RecordBatch], schema_: pa.Schema) -> pa.Table:
    if not batches:
        return empty_table(schema_)
    table = pa.Table.from_batches(batches)
    return table if table.schema == schema_ else table.select(schema_.names).cast(schema_)


class DirTail:
    """Follows the rank directories under one part of a run (one node's, when `host` is
    given: a rank directory on shared storage is read by its own node only)."""

    def __init__(self, run_dir: Path, host: str | None = None) -> None:
        self.run_dir = run_dir
        self.host = host
        self._ranks: dict[Path, _RankFiles] = {}

    def _discover(self) -> None:
        for rank_dir in layout.rank_dirs(self.run_dir):
            if rank_dir in self._ranks:
                continue
            try:
                meta = RankMeta.from_json(
                    json.loads((rank_dir / layout.RANK_META_FILE).read_text())
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not attached yet
            if self.host is None or meta.host == self.host:
                self._ranks[rank_dir] = _RankFiles(rank_dir, meta)

    def read_new(self) -> list[RankDelta]:
        self._discover()
        return [files.read_new() for files in self._ranks.values()]

    def cursor(self) -> dict[str, list[int]]:
        """Where each rank's files have been read to (rank -> byte offsets)."""
        return {
            str(f.meta.rank): [
                f.groups.offset,
                f.events.offset,
                f.collectives.offset,
                f.steps.offset,
            ]
            for f in self._ranks.values()
        }

    def seek(self, cursor: dict[str, list[int]]) -> None:
        """Resume each rank's files where a cursor says (ranks it does not name: from the
        start). A cursor that does not fit is ValueError."""
        self._discover()
        try:
            for f in self._ranks.values():
                offsets = cursor.get(str(f.meta.rank))
                if offsets is not None:
                    g, e, c, s = (int(o) for o in offsets)
                    f.groups.offset, f.events.offset = g, e
                    f.collectives.offset, f.steps.offset = c, s
        except (TypeError, ValueError, AttributeError):
            raise ValueError("a cursor is {rank: [4 byte offsets]}") from None


def encode_deltas(deltas: list[RankDelta]) -> bytes:
    """Deltas as bytes for the agents' HTTP endpoint: per rank a JSON header and two
    Arrow IPC streams, each prefixed with its length."""
    out = io.BytesIO()
    for d in deltas:
        header = json.dumps(
            {
                "meta": d.meta.to_json(),
                "groups": [g.to_json() for g in d.groups],
                "events": [e.to_json() for e in d.events],
            }
        ).encode()
        parts = [header, ipc_bytes(d.collectives), ipc_bytes(d.steps)]
        for part in parts:
            out.write(struct.pack("<Q", len(part)))
            out.write(part)
    return out.getvalue()


def decode_deltas(payload: bytes) -> list[RankDelta]:
    """The inverse of encode_deltas; ValueError when the bytes are not such a payload."""
    view = memoryview(payload)
    pos = 0
    parts: list[bytes] = []

    def take() -> bytes:
        nonlocal pos
        if pos + 8 > len(view):
            raise ValueError("truncated payload")
        (n,) = struct.unpack_from("<Q", view, pos)
        pos += 8
        if pos + n > len(view):
            raise ValueError("truncated payload")
        chunk = bytes(view[pos : pos + n])
        pos += n
        return chunk

    out = []
    try:
        while pos < len(view):
            parts = [take(), take(), take()]
            header = json.loads(parts[0])
            out.append(
                RankDelta(
                    meta=RankMeta.from_json(header["meta"]),
                    groups=[GroupMeta.from_json(g) for g in header["groups"]],
                    events=[Event.from_json(e) for e in header["events"]],
                    collectives=ipc.open_stream(parts[1]).read_all(),
                    steps=ipc.open_stream(parts[2]).read_all(),
                )
            )
    except (KeyError, TypeError, pa.ArrowInvalid, json.JSONDecodeError) as exc:
        raise ValueError(f"not a records payload ({exc})") from None
    return out


def ipc_bytes(table: pa.Table) -> bytes:
    """A table as one Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


@dataclass
class _RankWindow:
    meta: RankMeta
    groups: list[GroupMeta] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    event_names: set[str] = field(default_factory=set)
    collectives: list[pa.Table] = field(default_factory=list)
    steps: list[pa.Table] = field(default_factory=list)
    newest_step: int = -1
    oldest_step: int = 0  # held from here
    last_record_ns: int = 0  # on the rank's own clock


@dataclass(frozen=True)
class Window:
    """The analyzers' view of the recent steps: `run` has steps 0..n-1, which are the
    job's steps `first_step`..`first_step + n - 1`."""

    run: RunData
    first_step: int
    complete_steps: int  # steps every rank has finished (columns 0..complete_steps-1)


class RunWindow:
    """Each rank's last `keep_steps` steps and the collectives within them."""

    def __init__(self, keep_steps: int) -> None:
        self.keep_steps = keep_steps
        self.ranks: dict[int, _RankWindow] = {}
        self.run: RunMeta | None = None
        self.world: WorldMeta | None = None
        self.link_probe: list[dict[str, Any]] = []  # probe.json's pairs, once written

    def add(self, deltas: Iterable[RankDelta]) -> None:
        """Fold deltas in."""
        for d in deltas:
            w = self.ranks.setdefault(d.meta.rank, _RankWindow(d.meta))
            w.meta = d.meta
            w.groups += d.groups
            w.events = (w.events + d.events)[-KEEP_EVENTS:]
            w.event_names |= {e.name for e in d.events}
            if d.collectives.num_rows:
                w.collectives.append(d.collectives)
                w.last_record_ns = max(
                    w.last_record_ns,
                    int(np.max(numpy_of(d.collectives.column("t_arrive_ns")))),
                    int(np.max(numpy_of(d.collectives.column("t_end_ns")))),
                )
            if d.steps.num_rows:
                w.steps.append(d.steps)
                w.newest_step = max(w.newest_step, int(np.max(numpy_of(d.steps.column("step")))))
                w.last_record_ns = max(
                    w.last_record_ns, int(np.max(numpy_of(d.steps.column("t_end_ns"))))
                )
        self._trim()

    def _trim(self) -> None:
        """Drop what has left the window; a rank's tables are rewritten only once they
        hold twice the window, so that a tick does not copy every rank's tables."""
        for w in self.ranks.values():
            oldest = w.newest_step - self.keep_steps + 1
            if oldest <= 0 or w.oldest_step >= w.newest_step - 2 * self.keep_steps:
                continue
            steps = _concat(w.steps, schema.STEP_SCHEMA)
            kept = steps.filter(arrow_array(numpy_of(steps.column("step")) >= oldest, pa.bool_()))
            w.steps = [kept] if kept.num_rows else []
            w.oldest_step = oldest
            coll = _concat(w.collectives, schema.COLLECTIVE_SCHEMA)
            # Records outside any step (-1) stay as long as they are newer than the first
            # kept step's start
            start = int(np.min(numpy_of(kept.column("t_start_ns")))) if kept.num_rows else 0
            step_col = numpy_of(coll.column("step"))
            keep = (step_col >= oldest) | (
                (step_col < 0) & (numpy_of(coll.column("t_arrive_ns")) >= start)
            )
            coll = coll.filter(arrow_array(keep, pa.bool_()))
            w.collectives = [coll] if coll.num_rows else []

    def window(self) -> Window:
        """The window as run data, steps from the oldest step any rank still holds."""
        first = min(
            (
                max(0, w.newest_step - self.keep_steps + 1)
                for w in self.ranks.values()
                if w.newest_step >= 0
            ),
            default=0,
        )
        complete = min((w.newest_step for w in self.ranks.values()), default=-1) + 1
        problems: list[str] = []
        parts = []
        for rank, w in sorted(self.ranks.items()):
            w.steps = [_concat(w.steps, schema.STEP_SCHEMA)]
            w.collectives = [_concat(w.collectives, schema.COLLECTIVE_SCHEMA)]
            events = list(w.events)
            # the names of events that dropped out of the window still count
            events += [Event(name, 0) for name in w.event_names - {e.name for e in events}]
            parts.append(
                RankPart(w.meta, w.groups, w.collectives[0], w.steps[0], events, f"rank {rank}")
            )
        run = assemble(parts, self.run, self.world, problems)
        run.link_probe = self.link_probe
        _cut(run, first, complete)
        for rank, info in run.ranks.items():  # progress, as of the newest record
            newest = self.ranks[rank].last_record_ns
            if newest:
                info.last_record_ns = max(info.last_record_ns, newest + info.clock_offset_ns)
        return Window(run=run, first_step=first, complete_steps=max(0, complete - first))


def _concat(tables: list[pa.Table], schema_: pa.Schema) -> pa.Table:
    if not tables:
        return empty_table(schema_)
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _cut(run: RunData, first: int, complete: int) -> None:
    """Keep steps first..complete-1, renumbered from 0. Only the steps every rank has
    written: the newest ones have records of some ranks only, and a collective half seen
    would look like a late rank. Records outside steps (-1) stay up to the end of their
    rank's last kept step; records of steps before the window (an async collective that
    completed late) go."""
    steps, coll = run.steps, run.collectives
    keep = (steps["step"] >= first) & (steps["step"] < complete)
    last = steps.where(keep & (steps["step"] == complete - 1))
    cut_ns = np.zeros(max(run.ranks, default=-1) + 1, dtype=np.int64)
    cut_ns[last["rank"]] = last["t_end_ns"]
    run.steps = steps.where(keep)
    run.steps.data["step"] = run.steps["step"] - first
    c_step = coll["step"]
    in_window = (c_step >= first) & (c_step < complete)
    outside = (c_step < 0) & (coll["t_arrive_ns"] <= cut_ns[coll["rank"]])
    run.collectives = coll.where(in_window | outside)
    c_step = run.collectives["step"]
    run.collectives.data["step"] = np.where(c_step >= 0, c_step - first, c_step).astype(
        c_step.dtype
    )
