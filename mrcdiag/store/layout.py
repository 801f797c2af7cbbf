"""Where each part of a run directory lives: the one place that knows its paths.

```
RUN_DIR/run.json                       RunMeta, written first (launch, or rank 0)
RUN_DIR/world.json                     WorldMeta, by global rank 0 at attach
RUN_DIR/probe.json                     link probe between hosts, by rank 0 at attach
RUN_DIR/findings.jsonl                 live findings as they start, change and end
RUN_DIR/ranks/rank-00003/rank.json     RankMeta
RUN_DIR/ranks/rank-00003/collectives.arrows, steps.arrows   rows (store/schema.py)
RUN_DIR/ranks/rank-00003/groups.jsonl, events.jsonl         GroupMeta, Event
RUN_DIR/ranks/rank-00003/stacks.json   its threads' stacks, asked for on a hang
RUN_DIR/ranks/rank-00003/native_stacks.json   with native frames, where py-spy is installed
RUN_DIR/ranks/rank-00003/fatal.txt     the signal it died of, where it could say (faulthandler)
RUN_DIR/ranks/rank-00003/exit.json     its exit code as torchrun saw it, when it failed
RUN_DIR/ranks/rank-00003/flight_recorder.json   PyTorch's own record (--verify-capture)
RUN_DIR/ranks/rank-00003/flight_recorder_at_attach.json   the same when recording began
RUN_DIR/ranks/rank-00003/flight_recorder_hang.json   the same when a hang was found
RUN_DIR/nodes/HOST/samples.arrows, samples-recent.arrows   node agent samples (store/samples.py)
RUN_DIR/nodes/HOST/topology.json       how the node's GPUs are wired (collectors/topology.py)
```
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

RUN_FILE = "run.json"
WORLD_FILE = "world.json"
PROBE_FILE = "probe.json"
FINDINGS_FILE = "findings.jsonl"  # the live analysis: each finding's start, changes, end
RANKS_DIR = "ranks"
RANK_META_FILE = "rank.json"
COLLECTIVES_FILE = "collectives.arrows"
STEPS_FILE = "steps.arrows"
GROUPS_FILE = "groups.jsonl"
EVENTS_FILE = "events.jsonl"
STACKS_FILE = "stacks.json"  # where each of the rank's threads was, when asked
STACKS_REQUEST_FILE = "stacks.request"  # touched to ask for it (capture/stacks.py)
NATIVE_STACKS_FILE = "native_stacks.json"  # the same with native frames (py-spy, agent)
FATAL_FILE = "fatal.txt"  # a fatal signal and the threads' stacks (faulthandler)
EXIT_FILE = "exit.json"  # its exit code as torchrun saw it (capture/exits.py)
FLIGHT_RECORDER_FILE = "flight_recorder.json"
FLIGHT_RECORDER_HANG_FILE = "flight_recorder_hang.json"  # beside stacks.json, on a hang
ATTACH_FAILED_FILE = "attach_failed.json"  # why a rank records nothing, in its own words
FLIGHT_RECORDER_AT_ATTACH_FILE = "flight_recorder_at_attach.json"  # mrcdiag's own traffic
NODES_DIR = "nodes"
TOPOLOGY_FILE = "topology.json"  # in a node's folder: how its GPUs are wired
_RANK_PREFIX = "rank-"


def rank_dir(run_dir: Path, rank: int) -> Path:
    """The directory of one rank's records."""
    return run_dir / RANKS_DIR / f"{_RANK_PREFIX}{rank:05d}"


def rank_of_dir(path: Path) -> int:
    """The rank a rank directory holds (ValueError for another directory)."""
    return int(path.name.removeprefix(_RANK_PREFIX))


def rank_dirs(run_dir: Path) -> list[Path]:
    """Every rank directory under one part of a run, in rank order."""
    root = run_dir / RANKS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(_RANK_PREFIX))


def node_dir(run_dir: Path, host: str) -> Path:
    """The directory of one node agent's samples."""
    return run_dir / NODES_DIR / host


def node_dirs(run_dirs: Iterable[Path]) -> list[Path]:
    """Every node directory under the parts of a run."""
    found: list[Path] = []
    for run_dir in run_dirs:
        root = run_dir / NODES_DIR
        if root.is_dir():
            found.extend(sorted(p for p in root.iterdir() if p.is_dir()))
    return found


DEFAULT_RUNS_DIR = "mrcdiag-runs"
_LAUNCHER_MODULES = {"torch.distributed.run", "torch.distributed.launch"}


def job_name_of(command: list[str] | tuple[str, ...]) -> str:
    """The job's name from its command line: the training script's or module's name (the
    first `*.py`, or `-m module` that is not torchrun itself), else the program's name.
    `mrcdiag launch -- torchrun ... train.py` and a worker's own `sys.argv` both give
    `train`."""
    for i, part in enumerate(command):
        if part.endswith(".py"):
            return Path(part).stem or "job"
        if part == "-m" and i + 1 < len(command) and command[i + 1] not in _LAUNCHER_MODULES:
            return command[i + 1].rsplit(".", 1)[-1] or "job"
    return Path(command[0]).name if command and command[0] else "job"


def new_run_dir(job: str, parent: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """A fresh run directory for `job`: PARENT/JOB-YYYYmmdd-HHMMSS (UTC)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(parent).resolve() / f"{job}-{stamp}"
