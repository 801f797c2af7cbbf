"""A CPU limit on the rank's cgroup (a container's limit), read by the rank and named as
the cause: `cpu_throttled`, not another process on its cores."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cgroups import limited_cgroup
from conftest import (
    REPO,
    demo_job,
    job_env,
    launch_command,
    report_json,
    steps_recorded,
    torchrun,
)

from mrcdiag.store import layout

# a process that reads its cgroup's throttling as the step tracker does, says it has
# (a line on stdout), is busy for 2.5 s once it was moved (a line on stdin says so), and
# prints what it read
_CHILD = """
import sys, time
from mrcdiag.capture.cgroup_cpu import CgroupThrottle
throttle = CgroupThrottle()
before = throttle.since_last()
print("read", flush=True)
sys.stdin.readline()
total, t0 = 0, time.monotonic()
while time.monotonic() - t0 < 2.5:
    x = sum(range(2000))
    total += max(throttle.since_last(), 0)
print(before, total, flush=True)
"""


def test_a_process_moved_into_a_cpu_limited_cgroup_reads_how_long_it_was_held() -> None:
    with limited_cgroup(quota_ms=30) as group:
        if group is None:
            pytest.skip("needs root and a writable cgroup hierarchy with the cpu controller")
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=job_env(),
        )
        assert child.stdout.readline() == "read\n"  # where it was, not limited
        group.add(child.pid)
        held_before = group.throttled_ns()
        out, _ = child.communicate("moved\n", timeout=60)
        held_ns = group.throttled_ns() - held_before
    before, total = map(int, out.split())
    assert before == 0  # not limited before it was moved: held for nothing
    # busy 2.5 s at 30 ms of every 100 ms (held about 1.75 s), noticed within a tenth of
    # a second of the move: at most that tenth's held time and a period's are missed
    assert held_ns - 0.2e9 <= total <= held_ns + 0.05e9, (total, held_ns)
    assert held_ns >= 1e9, held_ns


@pytest.mark.slow
def test_a_rank_held_by_its_cgroups_cpu_limit_is_cpu_throttled(run_dir: Path) -> None:
    """Rank 1 moved into a cgroup that may run 30 ms of every 100 ms, as a container's
    CPU limit: it stalls for the rest of each period, and its thread waits in the run
    queue meanwhile. The cause is the limit, not another process on its core."""
    with limited_cgroup(quota_ms=30) as group:
        if group is None:
            pytest.skip("needs root and a writable cgroup hierarchy with the cpu controller")
        cmd = launch_command(run_dir, torchrun(2, demo_job("--steps", "150", "--work-ms", "10")))
        job = subprocess.Popen(
            cmd, env=job_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        meta = layout.rank_dir(run_dir, 1) / layout.RANK_META_FILE
        deadline = time.monotonic() + 120
        while not meta.exists() and job.poll() is None:  # the rank attached: its pid
            assert time.monotonic() < deadline, "rank 1 never attached"
            time.sleep(0.05)
        if job.poll() is None:
            group.add(json.loads(meta.read_text())["pid"])
        _, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr
    warnings = [f for f in report_json(run_dir)["findings"] if f["severity"] != "info"]
    stragglers = [f for f in warnings if f["kind"] == "straggler"]
    assert [f["ranks"] for f in stragglers] == [[1]], warnings
    (finding,) = stragglers
    assert finding["cause"] == "cpu_throttled", finding
    evidence = finding["evidence"]
    assert evidence["step_cpu_throttled_ms"] >= 0.5 * evidence["step_cpu_wait_ms"], evidence
    assert evidence["step_cpu_throttled_ms_others"] < 1.0, evidence


def _run_with_ranks_moved(
    run_dir: Path, group, ranks: list[int], nproc: int, after_steps: int = 0, steps: int = 150
) -> str:
    """The demo job with `ranks` moved into `group` as each attaches, or once rank 0
    recorded `after_steps` steps; its stderr."""
    cmd = launch_command(
        run_dir, torchrun(nproc, demo_job("--steps", str(steps), "--work-ms", "10"))
    )
    job = subprocess.Popen(
        cmd, env=job_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    for rank in ranks:
        meta = layout.rank_dir(run_dir, rank) / layout.RANK_META_FILE
        while not meta.exists() and job.poll() is None:  # the rank attached: its pid
            assert time.monotonic() < deadline, f"rank {rank} never attached"
            time.sleep(0.05)
    while after_steps and steps_recorded(run_dir, 0) < after_steps and job.poll() is None:
        assert time.monotonic() < deadline, "the job recorded too few steps"
        time.sleep(0.1)  # polls what the job wrote
    for rank in ranks:
        if job.poll() is None:
            meta = layout.rank_dir(run_dir, rank) / layout.RANK_META_FILE
            group.add(json.loads(meta.read_text())["pid"])
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr
    return stderr


@pytest.mark.slow
def test_a_job_whose_every_rank_runs_under_a_tight_cpu_limit_is_told_so(run_dir: Path) -> None:
    """Both ranks in one cgroup that may run 40 ms of every 100 ms from their start, as
    a pod whose CPU limit is too tight: no rank is behind the other and the pace never
    changes, yet every step waits for the next period."""
    with limited_cgroup(quota_ms=40) as group:
        if group is None:
            pytest.skip("needs root and a writable cgroup hierarchy with the cpu controller")
        _run_with_ranks_moved(run_dir, group, [0, 1], 2)
    findings = report_json(run_dir)["findings"]
    limits = [f for f in findings if f["cause"] == "cpu_throttled"]
    assert [(f["kind"], f["ranks"]) for f in limits] == [("idle_compute", [0, 1])], findings
    assert limits[0]["severity"] in ("warning", "critical"), limits
    others = [f for f in findings if f["severity"] != "info" and f["cause"] != "cpu_throttled"]
    assert others == [], others


@pytest.mark.slow
def test_a_cpu_limit_that_begins_to_bite_partway_is_a_slowdown_from_it(run_dir: Path) -> None:
    """Both ranks moved into a cgroup that may run 40 ms of every 100 ms once the job
    has run 60 steps, as a limit lowered on a running pod: the job slows down there, and
    the cause is the limit (their threads compute as much as before)."""
    onset = 60
    with limited_cgroup(quota_ms=40) as group:
        if group is None:
            pytest.skip("needs root and a writable cgroup hierarchy with the cpu controller")
        _run_with_ranks_moved(run_dir, group, [0, 1], 2, after_steps=onset, steps=200)
    findings = report_json(run_dir)["findings"]
    warnings = [f for f in findings if f["severity"] != "info"]
    # Held in most steps from there on, the job's pace changes: a slowdown with its
    # onset. Beside a busy core the ranks cannot use up the quota in every period, the
    # held steps come in bursts between quick ones, and the median pace hardly moves:
    # then the job-wide finding tells the limit's share of each step instead.
    assert [f["cause"] for f in warnings] == ["cpu_throttled"], findings
    (finding,) = warnings
    assert finding["kind"] in ("slowdown", "idle_compute"), finding
    if finding["kind"] == "slowdown":
        evidence = finding["evidence"]
        assert evidence["start_step"] >= onset - 3, evidence
        assert (
            evidence["step_cpu_throttled_ms_after"] > 2 * evidence["step_cpu_throttled_ms_before"]
        )
    else:
        assert finding["ranks"] == [0, 1] and finding["severity"] == "critical", finding
