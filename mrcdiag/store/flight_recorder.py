"""PyTorch's flight recorder, read: what each rank's c10d layer says it issued.

A rank's dump is either the JSON of `torch._C._distributed_c10d._dump_fr_trace_json`
(`mrcdiag launch --verify-capture` writes one per rank at detach, and every rank writes
one beside its stacks when a hang is found and TORCH_FR_BUFFER_SIZE is set), or the
pickle that PyTorch writes on a collective timeout (`_dump_fr_trace`, into files named
TORCH_FR_DUMP_TEMP_FILE + rank). The pickle is read by an unpickler that builds only
plain containers and numbers, never objects. Of each entry we keep the op as the
backend names it, the process group's name and description, its sequence numbers, its
state, the tensors' sizes and dtypes, and when it was created. Gloo (torch 2.13) records
collectives but not point-to-point operations, names its reduce-scatter `all_reduce`,
and leaves every entry "scheduled".
"""

from __future__ import annotations

import io
import json
import pickle
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mrcdiag.store import layout


class FlightRecorderError(Exception):
    """A dump that cannot be read; the message says which file and why."""


@dataclass(frozen=True)
class FlightEntry:
    op: str  # as the backend names it, without its "gloo:"/"nccl:" prefix
    group_name: str
    group_desc: str
    collective_seq: int
    p2p_seq: int
    is_p2p: bool
    state: str = ""  # scheduled, started, completed (NCCL; gloo leaves "scheduled")
    input_sizes: str = ""  # as the dump writes them, e.g. "[[1024, 1024]]"
    input_dtypes: str = ""
    time_created_ns: int = 0  # the rank's wall clock


@dataclass(frozen=True)
class FlightDump:
    entries: tuple[FlightEntry, ...]
    backend: str  # the prefix of the entries' names, "" when there are none
    # group name -> the last collective sequence number issued before recording began
    # (mrcdiag's own clock alignment and link probe): not ours to count.
    seq_at_attach: dict[str, int] = field(default_factory=dict)


class _PlainUnpickler(pickle.Unpickler):
    """A flight recorder dump holds dicts, lists, tuples, strings and numbers only: any
    object the file asks for is refused, so a foreign pickle runs no code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to build {module}.{name}")


def _load(path: Path) -> Any:
    raw = path.read_bytes()
    if raw[:1] == b"\x80":  # a pickle's PROTO opcode
        return _PlainUnpickler(io.BytesIO(raw)).load()
    return json.loads(raw.decode("utf-8"))


def read_flight_recorder(path: Path) -> FlightDump:
    """One rank's dump (JSON or pickle). Raises FlightRecorderError with one line."""
    try:
        data = _load(path)
    except OSError as exc:
        raise FlightRecorderError(f"{path}: cannot read ({exc.strerror})") from exc
    except (ValueError, pickle.UnpicklingError, EOFError) as exc:
        raise FlightRecorderError(
            f"{path}: not a flight recorder dump, JSON or pickle ({exc})"
        ) from exc
    raw = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        raise FlightRecorderError(f"{path}: no 'entries' list; is this a flight recorder dump?")
    entries = []
    backend = ""
    for item in raw:
        try:
            prefix, _, op = str(item["profiling_name"]).rpartition(":")
            group = item.get("process_group") or ["?", "?"]
            entries.append(
                FlightEntry(
                    op=op,
                    group_name=str(group[0]),
                    group_desc=str(group[1]) if len(group) > 1 else "",
                    collective_seq=int(item.get("collective_seq_id", 0) or 0),
                    p2p_seq=int(item.get("p2p_seq_id", 0) or 0),
                    is_p2p=bool(item.get("is_p2p", False)),
                    state=str(item.get("state", "") or ""),
                    input_sizes=_compact(item.get("input_sizes")),
                    input_dtypes=_compact(item.get("input_dtypes")),
                    time_created_ns=int(item.get("time_created_ns", 0) or 0),
                )
            )
            backend = backend or prefix
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            continue  # one odd entry does not hide the others
    return FlightDump(tuple(entries), backend)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) if value is not None else ""


_RANK_AT_END = re.compile(r"(\d+)(\.json|\.pkl|\.pickle)?$")


def read_dump_dir(path: Path, problems: list[str]) -> dict[int, FlightDump]:
    """The dumps under `path`, by rank: files named <prefix><rank> (as PyTorch's timeout
    dump names them, with or without .json), or a run directory's rank folders.
    Unreadable files go to `problems` with their reason; what was readable is kept."""
    if not path.is_dir():
        raise FlightRecorderError(f"{path}: not a directory of flight recorder dumps")
    if layout.rank_dirs(path):
        return read_run_dumps(path, problems, at_hang=True)
    dumps: dict[int, FlightDump] = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        match = _RANK_AT_END.search(file.name)
        if match is None:
            continue
        rank = int(match.group(1))
        try:
            dump = read_flight_recorder(file)
        except FlightRecorderError as exc:
            problems.append(str(exc))
            continue
        if rank in dumps:
            problems.append(f"{file}: a second dump of rank {rank}; kept the first")
            continue
        dumps[rank] = dump
    if not dumps and not problems:
        raise FlightRecorderError(
            f"{path}: no flight recorder dumps (files named <prefix><rank>, e.g. "
            "nccl_trace_rank_3, as TORCH_FR_DUMP_TEMP_FILE names them)"
        )
    return dumps


def read_run_dumps(
    run_dir: Path, problems: list[str], at_hang: bool = False
) -> dict[int, FlightDump]:
    """Every rank's dump under a run directory, by rank (with `at_hang`, the one written
    when a hang was found where there is no later one); unreadable ones go to
    `problems` with their reason."""
    dumps: dict[int, FlightDump] = {}
    for rank_dir in layout.rank_dirs(run_dir):
        path = rank_dir / layout.FLIGHT_RECORDER_FILE
        if not path.exists() and at_hang:
            path = rank_dir / layout.FLIGHT_RECORDER_HANG_FILE
        if not path.exists():
            continue
        try:
            dump = read_flight_recorder(path)
            at_attach = rank_dir / layout.FLIGHT_RECORDER_AT_ATTACH_FILE
            if at_attach.exists():
                seen: dict[str, int] = {}
                for e in read_flight_recorder(at_attach).entries:
                    seen[e.group_name] = max(seen.get(e.group_name, 0), e.collective_seq)
                dump = replace(dump, seq_at_attach=seen)
            dumps[layout.rank_of_dir(rank_dir)] = dump
        except (FlightRecorderError, ValueError) as exc:
            problems.append(str(exc))
    return dumps
