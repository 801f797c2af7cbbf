"""Reading a run directory back: validation, clock alignment, one flat table per kind.

A run may be spread over several directories (each node's local disk); `read_run`
merges them. Damage is never fatal when something is still readable: a torn last batch,
a missing file or a rank that never closed become `problems`, which the report prints.
A directory that is not a run at all, or whose run.json is garbage, raises RunDirError
with one line that says what to do.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mrcdiag.store import layout, records, schema
from mrcdiag.store.arrays import arrow_array, column_dtype, numpy_of
from mrcdiag.store.records import Event, GroupMeta, RankMeta, RunMeta, WorldMeta
from mrcdiag.store.samples import read_samples
from mrcdiag.store.step_grid import StepGrid, StepGridBuilder
from mrcdiag.store.tail import MappedPages, read_stream


class RunDirError(Exception):
    """The run directory cannot be read at all; the message is meant for the user."""


@dataclass(frozen=True)
class GroupInfo:
    name: str
    ranks: tuple[int, ...]
    backend: str
    desc: str = ""

    @property
    def size(self) -> int:
        return len(self.ranks)

    @property
    def label(self) -> str:
        """How a person knows the group: its mesh dimension or description, and its
        ranks ("tp 0-1", "world 0-7", "mine 0,2"); never just its size."""
        desc = self.desc
        if desc == "default_pg":
            kind = "world"
        elif desc.startswith("mesh_"):
            kind = desc.removeprefix("mesh_")
        else:
            kind = desc or f"group {self.name}"
        return f"{kind} {rank_ranges(list(self.ranks))}"


@dataclass
class RankInfo:
    rank: int
    host: str
    local_rank: int
    pid: int | None
    clock_offset_ns: int
    clock_uncertainty_ns: int | None
    clock_method: str
    closed_cleanly: bool
    dropped_records: int
    attached_ns: int  # aligned to rank 0's clock
    last_record_ns: int  # aligned; 0 when the rank recorded nothing
    stuck_in: dict[str, Any] | None  # last in_collective event, group resolved to a name
    disabled_reason: str | None
    terminated: bool = False  # flushed on SIGTERM: stopped by the launcher, not lost
    incomplete_records: int = 0  # async collectives that never completed before detach
    # its threads' stacks when asked (stacks.json: on a hang, or when launch stopped it)
    stacks: list[dict[str, Any]] | None = None
    failure: dict[str, Any] | None = None  # the exception it died of (error, step, ...)
    # the same with native frames (native_stacks.json, py-spy from the node agent), or
    # why there are none
    native_stacks: list[dict[str, Any]] | None = None
    native_error: str | None = None
    # the fatal signal it died of and where, as faulthandler wrote it (fatal.txt)
    fatal: dict[str, str] | None = None
    exit: dict[str, Any] | None = None  # exit.json: its exit code as torchrun saw it
    # the GPU it uses and the CPUs it may run on (its "device" event), where known
    device: dict[str, Any] | None = None


@dataclass
class Columns:
    """Named numpy columns of equal length; rows are records."""

    data: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.data.values()))) if self.data else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.data[name]

    def where(self, mask: np.ndarray) -> Columns:
        """The rows of `mask` (booleans or row numbers); a column of one value
        (reader._join) stays one value, not a copy of it per row."""
        n = int(np.count_nonzero(mask)) if mask.dtype == bool else len(mask)
        return Columns(
            {
                k: np.broadcast_to(v[:1], (n,)) if is_single(v) and n else v[mask]
                for k, v in self.data.items()
            }
        )


def is_single(column: np.ndarray) -> bool:
    """A column of one value broadcast over its rows (no memory of its own)."""
    return column.ndim == 1 and len(column) > 1 and column.strides[0] == 0


@dataclass
class RunData:
    run_dirs: list[Path]
    run: RunMeta | None  # None when run.json is missing
    world_size: int
    ranks: dict[int, RankInfo]
    groups: list[GroupInfo]  # global group id = index
    collectives: Columns  # + "rank", "group" is a global id, times aligned to rank 0
    steps: Columns  # + "rank", times aligned to rank 0
    problems: list[str] = field(default_factory=list)
    # the step records as [rank, step] arrays, where read_run made them instead of the
    # rows (its `step_grid`; steps is then empty); None: they are in steps
    step_grid: StepGrid | None = None
    node_samples: dict[str, Columns] = field(default_factory=dict)  # host -> samples
    link_probe: list[dict[str, Any]] = field(default_factory=list)  # probe.json pairs
    live_findings: list[dict[str, Any]] = field(default_factory=list)  # findings.jsonl lines
    topology: dict[str, dict[str, Any]] = field(default_factory=dict)  # host -> topology.json

    @property
    def hosts(self) -> list[str]:
        return sorted({info.host for info in self.ranks.values()})

    def host_of(self, rank: int) -> str:
        info = self.ranks.get(rank)
        return info.host if info else "?"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunDirError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); the run directory "
            "is damaged: restore the file or start a new run"
        ) from None
    except OSError as exc:
        raise RunDirError(f"cannot read {path}: {exc.strerror}") from None
    if not isinstance(value, dict):
        raise RunDirError(f"{path} does not hold a JSON object; the run directory is damaged")
    return value


def _read_json_lines(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            problems.append(f"{path}: line {number + 1} is torn; read the lines before it")
    return out


def _find_rank_dirs(run_dirs: Iterable[Path]) -> list[Path]:
    return [rank_dir for run_dir in run_dirs for rank_dir in layout.rank_dirs(run_dir)]


def read_run(
    run_dirs: Path | str | Iterable[Path | str],
    progress: Callable[[int, int], None] | None = None,
    step_grid: bool = False,
) -> RunData:
    """Read and merge the parts of one run. Raises RunDirError when nothing is readable.
    `step_grid`: the step records as [rank, step] arrays (RunData.step_grid), made a
    batch of ranks at a time, instead of rows: for a caller that needs no more of them
    than the analysis does (the report but its timeline), as the rows of a large run
    are its largest part (1.8 GB at 16384 ranks x 2000 steps)."""
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        if not d.exists():
            raise RunDirError(f"{d} does not exist; pass the run directory that launch printed")
        if not d.is_dir():
            raise RunDirError(f"{d} is not a directory; pass the run directory that launch printed")
    problems: list[str] = []
    run: RunMeta | None = None
    world: WorldMeta | None = None
    probe: dict[str, Any] = {}
    for d in dirs:
        if (d / layout.PROBE_FILE).exists():
            probe = probe or _read_json(d / layout.PROBE_FILE)
        if run is None and (d / layout.RUN_FILE).exists():
            run = RunMeta.from_json(_read_json(d / layout.RUN_FILE))
        if world is None and (d / layout.WORLD_FILE).exists():
            world = WorldMeta.from_json(_read_json(d / layout.WORLD_FILE))
    rank_dirs = _find_rank_dirs(dirs)
    if not run and not rank_dirs:
        names = ", ".join(str(d) for d in dirs)
        raise RunDirError(
            f"{names} is not an mrcdiag run directory (no run.json, no ranks/); "
            "pass the directory that `mrcdiag launch` printed"
        )
    if not run:
        problems.append("run.json is missing: job name and command line are unknown")
    if not rank_dirs:
        raise RunDirError(
            f"{dirs[0]} has no rank data yet: the job never created its default process "
            "group (init_process_group or init_device_mesh), or its workers did not run "
            "under `mrcdiag launch`"
        )
    data = _assemble(dirs, run, world, rank_dirs, problems, progress, step_grid)
    data.link_probe = list(probe.get("pairs") or [])
    for d in dirs:
        data.live_findings += _read_json_lines(d / layout.FINDINGS_FILE, problems)
    return data


@dataclass
class RankPart:
    """What one rank wrote, read into memory: from its directory (`read_rank_part`), or
    the recent window of it that the live analysis keeps (store/window.py)."""

    meta: RankMeta
    groups: list[GroupMeta]
    collectives: pa.Table
    steps: pa.Table
    events: list[Event]
    where: str  # its directory, for messages
    stacks: list[dict[str, Any]] | None = None  # stacks.json's threads, where written
    native: dict[str, Any] | None = None  # native_stacks.json, where written
    fatal: dict[str, str] | None = None  # fatal.txt, where it holds something
    exit: dict[str, Any] | None = None  # exit.json, where torchrun saw it fail
    # the memory-mapped files behind the tables, whose pages can be let go
    mapped: list[MappedPages] = field(default_factory=list)

    def drop_pages(self) -> None:
        """Let go of the pages of the tables' files read so far (they are read again
        when the tables are joined)."""
        for pages in self.mapped:
            pages.drop()


def read_rank_part(rank_dir: Path, problems: list[str]) -> RankPart | None:
    """One rank's records from its directory; None (and a problem) when it has none."""
    meta_path = rank_dir / layout.RANK_META_FILE
    if not meta_path.exists():
        failed = rank_dir / layout.ATTACH_FAILED_FILE
        if failed.exists():
            reason = _read_json(failed).get("reason", "?")
            problems.append(f"{rank_dir.name} never attached: {reason}")
        else:
            problems.append(f"{rank_dir} has no rank.json; skipped")
        return None
    try:
        meta = RankMeta.from_json(_read_json(meta_path))
    except (RunDirError, KeyError, ValueError, TypeError) as exc:
        problems.append(f"{meta_path} is damaged ({exc}); skipped that rank")
        return None
    try:  # one listing instead of a lookup per file that a rank may not have written
        present = set(os.listdir(rank_dir))
    except OSError:
        present = None

    def optional(name: str, read: Callable[[Path], Any]) -> Any:
        return read(rank_dir / name) if present is None or name in present else None

    mapped: list[MappedPages] = []
    return RankPart(
        meta=meta,
        groups=optional(layout.GROUPS_FILE, lambda path: _read_groups(path, problems)) or [],
        collectives=read_stream(
            rank_dir / layout.COLLECTIVES_FILE, schema.COLLECTIVE_SCHEMA, problems, mapped
        ),
        steps=read_stream(rank_dir / layout.STEPS_FILE, schema.STEP_SCHEMA, problems, mapped),
        events=[
            Event.from_json(e)
            for e in optional(layout.EVENTS_FILE, lambda path: _read_json_lines(path, problems))
            or []
        ],
        where=str(rank_dir),
        stacks=optional(layout.STACKS_FILE, lambda path: _read_stacks(path, problems)),
        native=optional(layout.NATIVE_STACKS_FILE, lambda path: _read_native(path, problems)),
        fatal=optional(layout.FATAL_FILE, read_fatal),
        exit=optional(layout.EXIT_FILE, lambda path: _read_exit(path, problems)),
        mapped=mapped,
    )


def _read_exit(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return _read_json(path)
    except RunDirError as exc:
        problems.append(str(exc))
        return None


# faulthandler's words for the signals it handles
_FATAL_SIGNALS = {
    "Segmentation fault": "SIGSEGV",
    "Aborted": "SIGABRT",
    "Bus error": "SIGBUS",
    "Floating-point exception": "SIGFPE",
    "Floating point exception": "SIGFPE",
    "Illegal instruction": "SIGILL",
}


def read_fatal(path: Path) -> dict[str, str] | None:
    """What faulthandler wrote when the rank died of a fatal signal: the signal, its
    words, and the innermost Python frame of the thread that took it (None if empty)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")[-64_000:]
    except OSError:
        return None
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("Fatal Python error")), None)
    if first is None:
        return None
    words = lines[first].split(":", 1)[-1].strip()
    where = ""
    for line in lines[first + 1 :]:
        if line.startswith("Current thread"):
            where = "?"
        elif where == "?" and line.strip().startswith("File "):
            where = line.strip()
            break
    return {
        "signal": _FATAL_SIGNALS.get(words, "a fatal signal"),
        "words": words,
        "where": "" if where == "?" else where,
    }


def _read_native(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = _read_json(path)
    except RunDirError as exc:
        problems.append(str(exc))
        return None
    threads = _read_stacks(path, problems) if isinstance(data.get("threads"), list) else None
    return {"threads": threads, "error": data.get("error")}


def _read_stacks(path: Path, problems: list[str]) -> list[dict[str, Any]] | None:
    if not path.exists():
        return None
    try:
        threads = _read_json(path).get("threads")
    except RunDirError as exc:
        problems.append(str(exc))
        return None
    if not isinstance(threads, list):
        problems.append(f"{path} has no list of threads; its stacks are not shown")
        return None
    return [t for t in threads if isinstance(t, dict) and isinstance(t.get("frames"), list)]


def _assemble(
    dirs: list[Path],
    run: RunMeta | None,
    world: WorldMeta | None,
    rank_dirs: list[Path],
    problems: list[str],
    progress: Callable[[int, int], None] | None = None,
    step_grid: bool = False,
) -> RunData:
    def parts() -> Iterable[RankPart]:
        for done, rank_dir in enumerate(rank_dirs):
            if progress is not None and done % 16 == 0:
                progress(done, len(rank_dirs))
            part = read_rank_part(rank_dir, problems)
            if part is not None:
                yield part

    data = assemble(parts(), run, world, problems, step_grid)
    data.run_dirs = dirs
    data.node_samples = _read_node_samples(dirs, data.ranks, problems)
    data.topology = _read_topology(dirs, problems)
    return data


def assemble(
    parts: Iterable[RankPart],
    run: RunMeta | None,
    world: WorldMeta | None,
    problems: list[str],
    step_grid: bool = False,
) -> RunData:
    """One run's data from its ranks' parts: groups given global ids, clocks aligned;
    `step_grid`: the steps as read_run's."""
    group_ids: dict[str, int] = {}
    groups: list[GroupInfo] = []
    ranks: dict[int, RankInfo] = {}
    coll_pieces: list[_Piece] = []
    step_pieces: list[_Piece] = []
    for part in parts:
        meta, local_groups, coll, steps = part.meta, part.groups, part.collectives, part.steps
        rank = meta.rank
        if rank in ranks:
            problems.append(f"rank {rank} appears twice; kept the first ({part.where} skipped)")
            continue
        local_to_global = np.full(
            max([g.index + 1 for g in local_groups] + [1]), -1, dtype=np.int32
        )
        for g in local_groups:
            if g.name not in group_ids:
                group_ids[g.name] = len(groups)
                groups.append(GroupInfo(g.name, g.ranks, g.backend, g.desc))
            local_to_global[g.index] = group_ids[g.name]
        local_index = numpy_of(coll.column("group"))
        known = local_index < len(local_to_global)
        if not known.all():
            problems.append(f"rank {rank}: {int((~known).sum())} records name an unknown group")
            coll = coll.filter(arrow_array(known, pa.bool_()))
        offset = meta.clock.offset_ns
        coll_pieces.append(_Piece(coll, rank, offset, local_to_global))
        step_pieces.append(_Piece(steps, rank, offset))
        ranks[rank] = _rank_info(meta, rank, part.events, coll, steps, offset, local_groups)
        # what was read of the rank's files so far: not held until the batch is joined
        part.drop_pages()
        ranks[rank].stacks = part.stacks
        ranks[rank].fatal = part.fatal
        ranks[rank].exit = part.exit
        if part.native is not None:
            ranks[rank].native_stacks = part.native.get("threads")
            ranks[rank].native_error = part.native.get("error")
    # times to rank 0's clock; a collective's end of 0 (never observed) stays 0
    collectives = _join(
        coll_pieces, schema.COLLECTIVE_SCHEMA, {"t_arrive_ns": False, "t_end_ns": True}
    )
    grid = StepGridBuilder() if step_grid else None
    steps_cols = _join(
        step_pieces, schema.STEP_SCHEMA, {"t_start_ns": False, "t_end_ns": False}, grid
    )
    world_size = (world.world_size if world else 0) or max(ranks, default=-1) + 1
    missing = sorted(set(range(world_size)) - set(ranks))
    if missing:
        problems.append(f"no data from rank(s) {rank_ranges(missing)} of {world_size}")
    return RunData(
        run_dirs=[],
        run=run,
        world_size=world_size,
        ranks=dict(sorted(ranks.items())),
        groups=groups,
        collectives=collectives,
        steps=steps_cols,
        problems=problems,
        step_grid=grid.build(np.array(sorted(ranks), dtype=np.int64)) if grid else None,
    )


def _read_node_samples(
    dirs: list[Path], ranks: dict[int, RankInfo], problems: list[str]
) -> dict[str, Columns]:
    """Node agent samples per host, on rank 0's clock (via a rank of the same host)."""
    offset_of_host = {info.host: info.clock_offset_ns for info in ranks.values()}
    out: dict[str, Columns] = {}
    for node_dir in layout.node_dirs(dirs):
        if node_dir.name in out:
            continue
        table = read_samples(node_dir, problems)
        if table is None:
            continue
        out[node_dir.name] = samples_columns(table, offset_of_host.get(node_dir.name, 0))
    return out


def _read_topology(dirs: list[Path], problems: list[str]) -> dict[str, dict[str, Any]]:
    """How each node's GPUs are wired, where its agent wrote it."""
    out: dict[str, dict[str, Any]] = {}
    for node_dir in layout.node_dirs(dirs):
        path = node_dir / layout.TOPOLOGY_FILE
        if node_dir.name in out or not path.exists():
            continue
        try:
            out[node_dir.name] = _read_json(path)
        except RunDirError as exc:
            problems.append(str(exc))
    return out


def samples_columns(table: pa.Table, offset_ns: int) -> Columns:
    """A node's samples as columns, times moved to rank 0's clock by `offset_ns` (that of
    a rank on the same host)."""
    return Columns(
        {
            "t_ns": numpy_of(table.column("t_ns")) + offset_ns,
            "name": _strings(table.column("name")),
            "labels": _strings(table.column("labels")),
            "value": numpy_of(table.column("value")),
        }
    )


def _strings(column: pa.ChunkedArray) -> np.ndarray:
    """An object array of a string column; a dictionary-encoded one (its dictionaries
    unified by read_samples) builds each word once."""
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    encoded = column.combine_chunks()
    words = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    return words[numpy_of(encoded.indices)] if len(words) else words


def series(samples: Columns, name: str, labels: str | None = None) -> tuple[np.ndarray, ...]:
    """(t_ns, value) of one metric series, or of all series of `name` when labels is None."""
    mask = samples["name"] == name
    if labels is not None:
        mask &= samples["labels"] == labels
    return samples["t_ns"][mask], samples["value"][mask]


# Group lines read so far, by their text: every rank of a group writes the same line
# (with all its members), so a run of 16384 ranks would parse the world group's 16384
# members 16384 times over.
_GROUP_LINES: dict[str, GroupMeta] = {}


def _read_groups(path: Path, problems: list[str]) -> list[GroupMeta]:
    if not path.exists():
        return []
    out = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        known = _GROUP_LINES.get(line)
        if known is not None:
            out.append(known)
            continue
        try:
            group = GroupMeta.from_json(json.loads(line))
        except json.JSONDecodeError:
            problems.append(f"{path}: line {number + 1} is torn; read the lines before it")
            continue
        except (KeyError, ValueError, TypeError, AttributeError):
            problems.append(f"{path}: a group line lacks its index, name or ranks; skipped")
            continue
        if len(_GROUP_LINES) > 100_000:
            _GROUP_LINES.clear()
        _GROUP_LINES[line] = group
        out.append(group)
    return out


def _rank_info(
    meta: RankMeta,
    rank: int,
    events: list[Event],
    coll: pa.Table,
    steps: pa.Table,
    offset: int,
    local_groups: list[GroupMeta],
) -> RankInfo:
    names = {e.name for e in events}
    dropped = max(
        (int(e.fields.get("records", e.fields.get("dropped", 0)) or 0) for e in events),
        default=0,
    )
    stuck = None
    for e in events:
        if e.name == records.EVENT_IN_COLLECTIVE:
            stuck = {"event": e.name, "t_ns": e.t_ns, **e.fields}
    if stuck is not None:
        index = int(stuck.get("group", -1))
        stuck["group_name"] = {g.index: g.name for g in local_groups}.get(index, "?")
        stuck["t_arrive_ns"] = int(stuck.get("t_arrive_ns", 0)) + offset
    disabled = next(
        (e.fields.get("reason") for e in events if e.name == records.EVENT_DISABLED), None
    )
    failure = next(
        (
            {**e.fields, "t_ns": e.t_ns + offset}
            for e in reversed(events)
            if e.name == records.EVENT_EXCEPTION
        ),
        None,
    )
    last = 0
    if coll.num_rows:
        last = max(last, int(np.max(numpy_of(coll.column("t_arrive_ns")))) + offset)
    if steps.num_rows:
        last = max(last, int(np.max(numpy_of(steps.column("t_end_ns")))) + offset)
    return RankInfo(
        rank=rank,
        host=meta.host,
        local_rank=meta.local_rank,
        pid=meta.pid,
        clock_offset_ns=offset,
        clock_uncertainty_ns=meta.clock.uncertainty_ns,
        clock_method=meta.clock.method,
        closed_cleanly=records.EVENT_CLOSED in names and failure is None,
        dropped_records=dropped,
        attached_ns=meta.attached_monotonic_ns + offset,
        last_record_ns=last,
        stuck_in=stuck,
        disabled_reason=disabled,
        terminated=records.EVENT_TERMINATED in names,
        incomplete_records=max(
            (int(e.fields.get("incomplete", 0) or 0) for e in events), default=0
        ),
        failure=failure,
        device=next((dict(e.fields) for e in events if e.name == records.EVENT_DEVICE), None),
    )


@dataclass
class _Piece:
    """One rank's table on its way into the run's columns."""

    table: pa.Table
    rank: int
    offset_ns: int  # to rank 0's clock
    group_ids: np.ndarray | None = None  # collectives: the rank's group index -> global id


def _join(
    pieces: list[_Piece],
    schema_: pa.Schema,
    shifted: dict[str, bool],
    into: StepGridBuilder | None = None,
) -> Columns:
    """The ranks' tables as one array per column (with "rank"), the times in `shifted`
    moved to rank 0's clock (True: a 0 stays 0) and "group" made a global id.

    A batch of pieces at a time (joined by Arrow, one column at a time, no Python per
    rank), each batch let go as soon as it is copied, into one allocation per column:
    the peak is the whole plus the pieces not yet copied, which are the rank files' own
    pages where they are memory-mapped (read_rank_part). Thousands of rank-sized
    arrays, joined column by column, left the allocator holding about as much again as
    the run's data (1.1 GiB at 4096 ranks x 2000 steps); a live window of 4096 ranks x
    60 steps spent a second in Python per rank and column.

    A column that holds one value in every row (the device memory of a CPU job, the
    peer of a job without point-to-point, a job's one group or op) is kept as that value
    broadcast (read-only, no memory), as a columnar store's run-length encoding would:
    at 16384 ranks each such column of the steps is 260 MB.

    `into`: each batch goes there instead, and no row is kept (the columns come back
    empty)."""
    total = sum(p.table.num_rows for p in pieces)
    names = [*schema_.names, "rank"]
    dtypes = {f.name: column_dtype(f.type) for f in schema_}
    dtypes["rank"] = np.dtype(np.int32)
    out: dict[str, np.ndarray] = {}
    single: dict[str, Any] = {}  # columns with one value so far: that value
    at = 0
    pieces.reverse()  # taken from the end: the first piece first
    while pieces:
        batch: list[_Piece] = []
        rows = 0
        while pieces and rows < _BATCH_ROWS and len(batch) < _BATCH_PIECES:
            batch.append(pieces.pop())
            rows += batch[-1].table.num_rows
        if rows:
            joined = pa.concat_tables([p.table for p in batch])  # no copy
            counts = np.array([p.table.num_rows for p in batch], dtype=np.int64)
            if into is not None:
                into.add({n: _batch_values(batch, joined, counts, n, shifted) for n in names})
            else:
                for name in names:
                    values = _batch_values(batch, joined, counts, name, shifted)
                    _put(out, single, name, values, at, rows, total, dtypes)
            del joined
        at += rows
        del batch
    # heap tables (the live window's) go back to the system, not to Arrow's pool
    pa.default_memory_pool().release_unused()
    if into is not None:
        return Columns({name: np.empty(0, dtypes[name]) for name in names})
    for name in names:
        if name not in out:
            value = np.asarray(single.get(name, 0), dtype=dtypes[name])
            out[name] = np.broadcast_to(value, (total,))
    return Columns({name: out[name] for name in names})


def _fresh(n: int, dtype: np.dtype) -> np.ndarray:
    """An array of `n` for a column of the whole run, from its own anonymous mapping: numpy
    asks for transparent huge pages on large arrays, and a fresh process filling its
    first gigabyte with them waited on the kernel's compaction (4x slower here than
    small pages: 1.06 vs 0.28 s for 460 MB)."""
    try:
        buffer = mmap.mmap(-1, max(n * dtype.itemsize, 1))
    except (OSError, ValueError):  # no mappings to be had: numpy's own allocation
        return np.empty(n, dtype)
    return np.frombuffer(buffer, dtype=dtype, count=n)


# pieces joined at a time: enough rows that the Python per batch is nothing, few enough
# that a batch's copy is small beside the run
_BATCH_ROWS = 1 << 20
_BATCH_PIECES = 1024


def _batch_values(
    batch: list[_Piece], joined: pa.Table, counts: np.ndarray, name: str, shifted: dict[str, bool]
) -> Any:
    """Column `name` of a batch of pieces, as the run holds it."""
    if name == "rank":
        ranks = {p.rank for p in batch}
        if len(ranks) == 1:
            return ranks.pop()
        return np.repeat(np.array([p.rank for p in batch], dtype=np.int32), counts)
    values = numpy_of(joined.column(name).combine_chunks())
    if name == "group":  # collectives: each piece's group index -> global id, end to end
        tables = [p.group_ids for p in batch if p.group_ids is not None]
        sizes = np.array([len(t) for t in tables], dtype=np.int64)
        start = np.repeat(np.cumsum(sizes) - sizes, counts)
        return np.concatenate(tables)[start + values]
    if name in shifted:
        offsets = np.array([p.offset_ns for p in batch], dtype=np.int64)
        if offsets.any():
            moved = values + np.repeat(offsets, counts)
            return np.where(values != 0, moved, 0) if shifted[name] else moved
    return values


def _put(
    out: dict[str, np.ndarray],
    single: dict[str, Any],
    name: str,
    values: Any,
    at: int,
    n: int,
    total: int,
    dtypes: dict[str, np.dtype],
) -> None:
    """Rows at..at+n of column `name`; allocated only once a second value appears."""
    column = out.get(name)
    if column is None:
        scalar = np.ndim(values) == 0
        first = values if scalar else values[0]
        known = single.setdefault(name, first)
        if first == known and (scalar or bool((values == first).all())):
            return
        column = out[name] = _fresh(total, dtypes[name])
        column[:at] = known
    column[at : at + n] = values


def rank_ranges(values: list[int]) -> str:
    """[0,1,2,5] -> '0-2, 5': short lists of ranks for one-line messages."""
    parts: list[str] = []
    start = prev = None
    for v in values:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            parts.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = v
    if start is not None:
        parts.append(f"{start}-{prev}" if start != prev else str(start))
    return ", ".join(parts)
