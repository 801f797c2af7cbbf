"""How a worker ended, as torchrun saw it: its exit code (a signal when negative).

A rank killed by SIGKILL (the out-of-memory killer, a scheduler's hard kill) cannot
write anything. The torchrun process that started it can: it logs the first failed
worker's exit code and pid. In torchrun's own process (where `mrcdiag launch`'s
sitecustomize also runs), a logging handler on torch's elastic logger takes that record
and writes `exit.json` into the directory of the rank with that pid. Nothing in torch is
patched: if the record's shape changes, nothing is written and the report says what it
knew before.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
from pathlib import Path
from typing import Any

ELASTIC_LOGGER = "torch.distributed.elastic.multiprocessing.api"


class _FailedWorker(logging.Handler):
    def __init__(self, run_dir: Path) -> None:
        super().__init__(level=logging.ERROR)
        self.run_dir = run_dir

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if not str(record.msg).startswith("failed (exitcode"):
                return
            exitcode, _local_rank, pid = record.args[:3]  # type: ignore[index]
            note_exit(self.run_dir, int(pid), int(exitcode))
        except Exception:
            pass  # torchrun's own failure handling goes on regardless


def watch_worker_exits(run_dir: Path) -> None:
    """In torchrun's process: note the failed worker's exit code in its rank folder."""
    logging.getLogger(ELASTIC_LOGGER).addHandler(_FailedWorker(run_dir))


def note_exit(run_dir: Path, pid: int, exitcode: int) -> bool:
    """Write exit.json for the rank of this node whose process was `pid`."""
    from mrcdiag.store import layout  # here, not at import: torchrun starts as fast as ever
    from mrcdiag.store.writer import write_json_atomic

    host = socket.gethostname()
    for rank_dir in layout.rank_dirs(run_dir):
        try:
            meta = json.loads((rank_dir / layout.RANK_META_FILE).read_text())
        except (OSError, ValueError):
            continue
        if meta.get("pid") == pid and meta.get("host") in (host, None):
            write_json_atomic(rank_dir / layout.EXIT_FILE, exit_record(exitcode))
            return True
    return False


def exit_record(exitcode: int) -> dict[str, Any]:
    out: dict[str, Any] = {"exitcode": exitcode, "seen_by": "torchrun"}
    if exitcode < 0:
        try:
            out["signal"] = signal.Signals(-exitcode).name
        except ValueError:
            out["signal"] = f"signal {-exitcode}"
    return out
