"""Attaching a rank: where its records go, how its clock relates to rank 0's, and start.

Called from the patched `init_process_group` (under `mrcdiag launch`) or by the user's
`mrcdiag.attach()`. It runs on every rank at the same point of the program, which is
what lets it exchange clock timestamps. Any failure leaves the job running, unrecorded,
with one warning.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mrcdiag
from mrcdiag.capture import clock, probe
from mrcdiag.capture.install import install
from mrcdiag.capture.lifecycle import VERIFY_ENV, dump_flight_recorder, start_session
from mrcdiag.capture.recorder import Recorder
from mrcdiag.capture.wrappers import current_session, own_traffic
from mrcdiag.log import warn_once
from mrcdiag.store import layout
from mrcdiag.store.records import RankMeta, RunMeta, WorldMeta
from mrcdiag.store.writer import write_json_atomic


def default_job_name() -> str:
    return os.environ.get("MRCDIAG_JOB") or layout.job_name_of(sys.argv)


def attach_after_init() -> None:
    """What every init_process_group does once the wrappers are in: under `mrcdiag
    launch` (MRCDIAG_RUN_DIR set), attach this rank."""
    if os.environ.get("MRCDIAG_RUN_DIR"):
        attach()


def attach(run_dir: str | os.PathLike | None = None, job: str | None = None) -> bool:
    """Start recording this rank. Call on every rank, after init_process_group.

    Returns True when recording; False (with one warning) when it could not start.
    """
    if current_session() is not None:
        return True
    try:
        import torch

        install(torch, on_init=attach_after_init)
        return _attach(torch, run_dir, job)
    except Exception as exc:  # the job is sacred
        warn_once("attach", f"not recording this rank ({exc!r}); the job goes on")
        _say_why_not_attached(run_dir, repr(exc))
        return False


def _say_why_not_attached(run_dir_arg: Any, reason: str) -> None:
    """Leave the reason where the report looks for this rank's records."""
    try:
        run_dir = run_dir_arg or os.environ.get("MRCDIAG_RUN_DIR")
        rank = os.environ.get("RANK")
        if run_dir and rank is not None:
            rank_dir = layout.rank_dir(Path(run_dir), int(rank))
            rank_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(rank_dir / layout.ATTACH_FAILED_FILE, {"reason": reason})
    except Exception:
        pass  # nothing more to do: the warning above went to the rank's stderr


def _cpu_group(dist: Any) -> Any:
    """A group that can move CPU tensors: the default one on gloo, else a gloo subgroup."""
    if dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


def _attach(torch: Any, run_dir_arg: Any, job_arg: str | None) -> bool:
    dist = torch.distributed
    if not dist.is_initialized():
        warn_once("not-init", "attach() needs init_process_group() first; not recording")
        return False
    rank, world_size = dist.get_rank(), dist.get_world_size()
    job = job_arg or default_job_name()
    with own_traffic():
        group = _cpu_group(dist)
        run_dir = _agree_on_run_dir(dist, rank, run_dir_arg, job, group)
        t0 = time.monotonic_ns()
        estimate, hosts, agents = clock.estimate_offsets(dist, torch, rank, world_size, group)
        clock_sync_s = (time.monotonic_ns() - t0) / 1e9
        links = probe.probe_links(dist, torch, rank, hosts, group)
    rank_dir = layout.rank_dir(run_dir, rank)
    rank_dir.mkdir(parents=True, exist_ok=True)
    backend = str(dist.get_backend())
    if rank == 0:
        world = WorldMeta.of_hosts(hosts, backend, torch.__version__, agents)
        _write_run_files(run_dir, job, world)
        if links:
            write_json_atomic(run_dir / layout.PROBE_FILE, {"pairs": links})
    meta = RankMeta(
        rank=rank,
        host=socket.gethostname(),
        local_rank=int(os.environ.get("LOCAL_RANK", rank)),
        world_size=world_size,
        pid=os.getpid(),
        boot_id=clock.boot_id(),
        backend=backend,
        clock=estimate,
        clock_sync_s=clock_sync_s,
        attached_monotonic_ns=time.monotonic_ns(),
        attached_unix_ns=time.time_ns(),
    )
    write_json_atomic(rank_dir / layout.RANK_META_FILE, meta.to_json())
    if os.environ.get(VERIFY_ENV):  # the collectives of attach itself, not recorded
        dump_flight_recorder(rank_dir / layout.FLIGHT_RECORDER_AT_ATTACH_FILE)
    recorder = Recorder(rank_dir)
    start_session(recorder, dist, rank)
    recorder.start()
    return True


def _agree_on_run_dir(dist: Any, rank: int, run_dir_arg: Any, job: str, group: Any) -> Path:
    chosen = run_dir_arg or os.environ.get("MRCDIAG_RUN_DIR")
    if chosen:
        return Path(chosen).resolve()
    box = [str(layout.new_run_dir(job)) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0, group=group)
    return Path(box[0])


def _write_run_files(run_dir: Path, job: str, world: WorldMeta) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / layout.WORLD_FILE, world.to_json())
    run_file = run_dir / layout.RUN_FILE
    if not run_file.exists():  # under the Python API nobody wrote it before us
        write_json_atomic(run_file, run_metadata(job, sys.argv).to_json())


def run_metadata(job: str, command: list[str]) -> RunMeta:
    """The run.json of a run started now by `command`."""
    return RunMeta(
        job=job,
        command=tuple(command),
        start=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        start_unix_s=time.time(),
        host=socket.gethostname(),
        mrcdiag_version=mrcdiag.__version__,
        python=sys.version.split()[0],
    )
