"""PyTorch's flight recorder, read: what each rank's c10d layer says it issued.

Each rank's dump is the JSON of `torch._C._distributed_c10d._dump_fr_trace_json`
(`mrcdiag launch --verify-capture` writes one per rank at detach). Of each entry we keep
what a count of collectives needs: the op as the backend names it, the process group's
name and description, and its sequence numbers. Gloo (torch 2.13) records collectives
but not point-to-point operations, and names its reduce-scatter `all_reduce`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

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


@dataclass(frozen=True)
class FlightDump:
    entries: tuple[FlightEntry, ...]
    backend: str  # the prefix of the entries' names, "" when there are none
    # group name -> the last collective sequence number issued before recording began
    # (mrcdiag's own clock alignment and link probe): not ours to count.
    seq_at_attach: dict[str, int] = field(default_factory=dict)


def read_flight_recorder(path: Path) -> FlightDump:
    """One rank's dump. Raises FlightRecorderError with one line for the user."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FlightRecorderError(f"{path}: cannot read ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise FlightRecorderError(f"{path}: not a flight recorder JSON dump ({exc})") from exc
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
                )
            )
            backend = backend or prefix
        except (KeyError, TypeError, ValueError, IndexError):
            continue  # one odd entry does not hide the others
    return FlightDump(tuple(entries), backend)


def read_run_dumps(run_dir: Path, problems: list[str]) -> dict[int, FlightDump]:
    """Every rank's dump under a run directory, by rank; unreadable ones go to
    `problems` with their reason."""
    dumps: dict[int, FlightDump] = {}
    for rank_dir in layout.rank_dirs(run_dir):
        path = rank_dir / layout.FLIGHT_RECORDER_FILE
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
