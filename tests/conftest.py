"""Shared helpers: run real torchrun jobs under `mrcdiag launch` and read what they left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

JOBS = Path(__file__).parent / "jobs"
REPO = Path(__file__).resolve().parent.parent
# How long `mrcdiag launch` may take to end after a SIGTERM: the ranks' stacks (3 s),
# torchrun's grace for its workers (30 s) and the agent's last word, on a busy machine.
STOPS_WITHIN_S = 120


@dataclass
class JobResult:
    run_dir: Path
    returncode: int
    stdout: str
    stderr: str


def job_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def torchrun(nproc: int, target: list[str], master_port: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if master_port is not None:
        cmd += ["--master-port", str(master_port)]
    else:
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0"]
    return cmd + target


def launch_command(
    run_dir: Path, job_command: list[str], port: int = 0, extra: list[str] | None = None
) -> list[str]:
    """`mrcdiag launch` of `job_command`, its /metrics on 127.0.0.1:port (0: any)."""
    return [
        sys.executable,
        "-m",
        "mrcdiag.cli",
        "launch",
        "--run-dir",
        str(run_dir),
        "--metrics-port",
        str(port),
        "--metrics-addr",
        "127.0.0.1",
        *(extra or []),
        "--",
        *job_command,
    ]


def launch(
    run_dir: Path,
    nproc: int,
    target: list[str],
    timeout: float = 120,
    extra_launch: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> JobResult:
    """Run `mrcdiag launch -- torchrun ... target` and wait for it."""
    cmd = launch_command(run_dir, torchrun(nproc, target), extra=extra_launch)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env or job_env(), cwd=REPO
    )
    return JobResult(run_dir, proc.returncode, proc.stdout, proc.stderr)


def demo_job(*args: str) -> list[str]:
    return ["-m", "mrcdiag.demo_job", *args]


def script(name: str, *args: str) -> list[str]:
    return [str(JOBS / name), *args]


def report_json(*run_dirs: Path, extra: list[str] | None = None) -> dict:
    proc = mrcdiag("report", *map(str, run_dirs), "--format", "json", *(extra or []))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def mrcdiag(*args: str, timeout: float = 120, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "mrcdiag.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or job_env(),
        cwd=REPO,
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def read_json_file(path: Path) -> dict:
    """A JSON file a job wrote for the test (its own account of what it did)."""
    return json.loads(path.read_text(encoding="utf-8"))


def warnings_of_a_clean_run(report: dict) -> list[dict]:
    """A clean job's warnings, less those an outside tenant earns it. The suite must pass
    beside a process that keeps a core busy, and a rank that shares its core with that
    process is rightly `host_contention`, where its own thread's clocks show it: it
    waited for a CPU, beyond its peers, for at least half of its lateness."""

    return [
        f
        for f in report["findings"]
        if f["severity"] in ("warning", "critical") and not tenant_explains(f)
    ]


def tenant_explains(f: dict) -> bool:
    """A host_contention finding whose rank's thread waited for a CPU, beyond its peers,
    for at least half of its lateness: another process on its core, as the suite's
    busy loop is."""
    e = f["evidence"]
    extra_wait_ms = e.get("step_cpu_wait_ms", 0) - e.get("step_cpu_wait_ms_others", 0)
    late_ms = e.get("median_own_work_lateness_ms", float("inf"))
    return f["cause"] == "host_contention" and extra_wait_ms >= 0.5 * late_ms


def live_warnings_of_a_clean_run(run_dir: Path) -> list[dict]:
    """The warnings the live analysis gave a clean job (findings.jsonl), on the same
    terms as warnings_of_a_clean_run."""
    path = run_dir / "findings.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return [
        x["finding"]
        for x in lines
        if x["event"] in ("start", "change") and not tenant_explains(x["finding"])
    ]


def steps_recorded(run_dir: Path, rank: int) -> int:
    """How many steps `rank` of a running job has written so far (for polling)."""
    from mrcdiag.store import layout, schema
    from mrcdiag.store.tail import read_stream

    path = layout.rank_dir(run_dir, rank) / layout.STEPS_FILE
    return read_stream(path, schema.STEP_SCHEMA, []).num_rows if path.exists() else 0
