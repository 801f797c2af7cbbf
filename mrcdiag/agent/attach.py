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
from mrcdiag.agent import clock, hook, probe
from mrcdiag.agent.log import warn_once
from mrcdiag.agent.recorder import Recorder
from mrcdiag.store import schema
from mrcdiag.store.writer import write_json_atomic

DEFAULT_RUNS_DIR = "mrcdiag-runs"


def default_job_name() -> str:
    return os.environ.get("MRCDIAG_JOB") or Path(sys.argv[0] or "job").stem or "job"


def new_run_dir(job: str, parent: str = DEFAULT_RUNS_DIR) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(parent).resolve() / f"{job}-{stamp}"


def attach(run_dir: str | os.PathLike | None = None, job: str | None = None) -> bool:
    """Start recording this rank. Call on every rank, after init_process_group.

    Returns True when recording; False (with one warning) when it could not start.
    """
    if hook.current_session() is not None:
        return True
    try:
        import torch

        hook.install(torch)
        return _attach(torch, run_dir, job)
    except Exception as exc:  # noqa: BLE001 - the job is sacred
        warn_once("attach", f"not recording this rank ({exc!r}); the job goes on")
        return False


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
    with hook.own_traffic():
        group = _cpu_group(dist)
        run_dir = _agree_on_run_dir(dist, rank, run_dir_arg, job, group)
        t0 = time.monotonic_ns()
        estimate, hosts = clock.estimate_offsets(dist, torch, rank, world_size, group)
        clock_sync_s = (time.monotonic_ns() - t0) / 1e9
        links = probe.probe_links(dist, torch, rank, hosts, group)
    rank_dir = hook.rank_dir_for(run_dir, rank)
    rank_dir.mkdir(parents=True, exist_ok=True)
    backend = str(dist.get_backend())
    if rank == 0:
        _write_run_files(run_dir, job, world_size, hosts, backend, torch.__version__)
        if links:
            write_json_atomic(run_dir / schema.PROBE_FILE, {"pairs": links})
    write_json_atomic(
        rank_dir / schema.RANK_META_FILE,
        {
            "schema": schema.SCHEMA_VERSION,
            "rank": rank,
            "local_rank": int(os.environ.get("LOCAL_RANK", rank)),
            "world_size": world_size,
            "host": socket.gethostname(),
            "boot_id": clock.boot_id(),
            "pid": os.getpid(),
            "backend": backend,
            "clock": estimate.as_dict(),
            "clock_sync_s": clock_sync_s,
            "attached_monotonic_ns": time.monotonic_ns(),
            "attached_unix_ns": time.time_ns(),
        },
    )
    recorder = Recorder(rank_dir)
    hook.start_session(recorder, dist, rank)
    recorder.start()
    return True


def _agree_on_run_dir(dist: Any, rank: int, run_dir_arg: Any, job: str, group: Any) -> Path:
    chosen = run_dir_arg or os.environ.get("MRCDIAG_RUN_DIR")
    if chosen:
        return Path(chosen).resolve()
    box = [str(new_run_dir(job)) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0, group=group)
    return Path(box[0])


def _write_run_files(
    run_dir: Path, job: str, world_size: int, hosts: list[str], backend: str, torch_version: str
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    ranks_per_host: dict[str, list[int]] = {}
    for r, host in enumerate(hosts):
        ranks_per_host.setdefault(host, []).append(r)
    write_json_atomic(
        run_dir / schema.WORLD_FILE,
        {
            "schema": schema.SCHEMA_VERSION,
            "world_size": world_size,
            "hosts": sorted(ranks_per_host),
            "ranks_per_host": ranks_per_host,
            "backend": backend,
            "torch_version": torch_version,
        },
    )
    run_file = run_dir / schema.RUN_FILE
    if not run_file.exists():  # under the Python API nobody wrote it before us
        write_json_atomic(run_file, run_metadata(job, sys.argv))


def run_metadata(job: str, command: list[str]) -> dict[str, Any]:
    return {
        "schema": schema.SCHEMA_VERSION,
        "job": job,
        "command": list(command),
        "start_unix_s": time.time(),
        "start": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "mrcdiag_version": mrcdiag.__version__,
        "python": sys.version.split()[0],
    }
