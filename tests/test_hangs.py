"""When a job hangs: every rank's stacks, the odd one out, and ending the job for it."""

from __future__ import annotations

import json
import re
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import STOPS_WITHIN_S, demo_job, mrcdiag, report_json
from livejob import LiveJob, step_unix_s

from mrcdiag.analyzers.hangs import find_live_hangs
from mrcdiag.analyzers.stacks import stack_groups
from mrcdiag.store.reader import read_run
from mrcdiag.store.synthetic import SyntheticSpec, write_synthetic_run


def _waiting_in_a_collective(run_dir: Path, rank: int) -> bool:
    events = run_dir / "ranks" / f"rank-{rank:05d}" / "events.jsonl"
    return events.exists() and '"in_collective"' in events.read_text()


@pytest.mark.slow
def test_rank_blocked_in_its_code_is_named_with_its_frame_after_launch_is_stopped(
    run_dir: Path,
) -> None:
    job = LiveJob.start(
        run_dir, 3,
        demo_job("--steps", "400", "--work-ms", "10", "--hang-rank", "1", "--hang-at-step", "30"),
        extra=["--hang-after", "600"],  # the live analysis stays out of it: launch is stopped
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (_waiting_in_a_collective(run_dir, 0) and _waiting_in_a_collective(run_dir, 2)):
            assert time.time() < deadline and job.process.poll() is None, job.said()
            time.sleep(0.2)  # polling files the ranks write
    finally:
        job.process.send_signal(signal.SIGTERM)
        job.wait(STOPS_WITHIN_S)
    (hang,) = [f for f in report_json(run_dir)["findings"] if f["kind"] == "hang"]
    assert hang["ranks"] == [1] and hang["cause"] == "missing_rank", hang
    stuck = hang["evidence"]["stuck_at"]["1"]
    assert stuck["user_frame"].startswith("demo_job.py:") and "_train" in stuck["user_frame"]
    assert any("threading.py" in frame for frame in stuck["innermost"]), stuck
    # and below Python, from py-spy (the test extras install it): the lock it waits on
    native = stuck["native_innermost"]
    assert any(f.endswith(".so.6)") or ".so." in f for f in native), native
    assert any("threading.py" in f and "wait" in f for f in native), native
    groups = {g["ranks"]: g for g in hang["evidence"]["stack_groups"]}
    assert set(groups) == {"0, 2", "1"}, groups
    assert groups["0, 2"]["user_frame"] != stuck["user_frame"]  # they wait elsewhere


@pytest.mark.slow
def test_on_hang_abort_ends_the_job_with_its_exit_code_and_the_run_still_reports(
    run_dir: Path,
) -> None:
    hang_after_s = 5.0
    job = LiveJob.start(
        run_dir, 3,
        demo_job("--steps", "400", "--work-ms", "10", "--hang-rank", "2", "--hang-at-step", "40"),
        extra=["--hang-after", str(hang_after_s), "--on-hang", "abort"],
    )  # fmt: skip
    code = job.wait(180)
    ended = time.time()
    assert code == 75, job.said()
    stuck_since = step_unix_s(run_dir, 2, 39, end=True)
    assert ended - stuck_since <= hang_after_s + 15, (ended, stuck_since)
    (hang,) = [f for f in report_json(run_dir)["findings"] if f["kind"] == "hang"]
    assert hang["ranks"] == [2] and hang["evidence"]["stuck_at"]["2"]["user_frame"]


def test_sixty_four_ranks_two_of_them_elsewhere_are_one_group_and_the_odd_ones(
    tmp_path: Path,
) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", SyntheticSpec(ranks=64, steps=10))

    def frames(*where: tuple[str, int, str]) -> list[dict]:
        return [{"file": f, "line": n, "function": name} for f, n, name in where]

    waiting = frames(("/job/train.py", 80, "main"), ("/venv/site-packages/torch/x.py", 5, "wait"))
    odd = {
        17: frames(("/job/train.py", 61, "main"), ("/job/data.py", 12, "load_shard")),
        42: frames(("/job/train.py", 95, "main"), ("/job/ckpt.py", 30, "save")),
    }
    for rank in range(64):
        threads = [{"thread": "MainThread", "main": True, "frames": odd.get(rank, waiting)}]
        path = run_dir / "ranks" / f"rank-{rank:05d}" / "stacks.json"
        path.write_text(json.dumps({"t_unix_s": 0, "reason": "requested", "threads": threads}))
    groups = stack_groups(read_run(run_dir))
    assert [(g["ranks"], g["count"]) for g in groups] == [
        ("0-16, 18-41, 43-63", 62),
        ("17", 1),
        ("42", 1),
    ]
    assert groups[0]["user_frame"] == "train.py:80 main"
    assert groups[1]["user_frame"] == "data.py:12 load_shard"
    # the report shows them: in the JSON as they are, in the HTML as one row a group
    assert report_json(run_dir)["stack_groups"] == groups
    page = run_dir.parent / "report.html"
    result = mrcdiag("report", str(run_dir), "--format", "html", "-o", str(page))
    assert result.returncode == 0, result.stderr
    table = page.read_text().split('<h2 id="stacks">')[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>([^<]*)</td><td>(\d+)</td><td><code>([^<]*)</code>", table)
    assert rows == [
        ("0-16, 18-41, 43-63", "62", "train.py:80 main"),
        ("17", "1", "data.py:12 load_shard"),
        ("42", "1", "ckpt.py:30 save"),
    ]


def test_ranks_in_a_collective_for_less_than_the_wait_are_no_hang_outside_collectives(
    tmp_path: Path,
) -> None:
    """Ranks 0-2 went into the next all_reduce 20 ms after the last record (the compute
    before it), rank 3 never came. Once the last record is `hang_after_s` old, the job is
    not stuck outside collectives (ranks are inside one): no verdict until they have
    waited that long, and then rank 3 is missing (CI once saw no_progress on all ranks)."""
    run = read_run(write_synthetic_run(tmp_path / "run", SyntheticSpec(ranks=4, steps=20)))
    last_ns = max(i.last_record_ns for i in run.ranks.values())
    arrived_ns = last_ns + 20_000_000
    next_seq = int(run.collectives["seq"].max()) + 1
    inside = {"op": "all_reduce", "group_name": "0", "seq": next_seq, "t_arrive_ns": arrived_ns}
    run.ranks = {
        r: replace(i, closed_cleanly=False, stuck_in=inside if r < 3 else None)
        for r, i in run.ranks.items()
    }
    hang_after_s = 5.0
    wait_ns = int(hang_after_s * 1e9)
    assert find_live_hangs(run, last_ns + wait_ns, hang_after_s) == []
    (hang,) = find_live_hangs(run, arrived_ns + wait_ns, hang_after_s)
    assert (hang.cause, hang.ranks) == ("missing_rank", (3,)), hang
    assert hang.evidence["waiting_ranks"] == [0, 1, 2]
    # and with nobody inside a collective, the same silence is a hang outside them
    run.ranks = {r: replace(i, stuck_in=None) for r, i in run.ranks.items()}
    (outside,) = find_live_hangs(run, last_ns + wait_ns, hang_after_s)
    assert (outside.cause, outside.ranks) == ("no_progress", (0, 1, 2, 3)), outside


def test_only_critical_anomalies_and_hangs_put_a_node_on_the_exclude_list() -> None:
    from mrcdiag.analyzers.findings import Finding
    from mrcdiag.report.exclude import nodes_to_exclude, render_exclude, slurm_hostlist

    findings = [
        Finding("straggler", "critical", "slow_node", 9.0, (8, 9), ("node07",)),
        Finding("hang", "critical", "missing_rank", 1.0, (17,), ("node03",)),
        Finding("straggler", "warning", "host_contention", 2.0, (4,), ("node02",)),
        Finding("interconnect", "info", "exposed_communication", 5.0, (), ("node04",)),
        Finding("slowdown", "critical", "slow_compute", 30.0, (0, 1)),
    ]
    assert nodes_to_exclude(findings) == ["node03", "node07"]
    text = render_exclude(findings)
    assert "--exclude=node[03,07]" in text
    assert "kubectl cordon node03 && kubectl taint nodes node03 " in text
    assert render_exclude(findings[2:]) == ""
    assert slurm_hostlist(["gpu1", "gpu2", "gpu3", "gpu10", "login"]) == "gpu[1-3,10],login"


def test_native_frames_of_a_process_that_is_gone_say_why(tmp_path: Path) -> None:
    import subprocess
    import sys

    from mrcdiag.agent.native import native_stacks

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    rank_dir = tmp_path / "ranks" / "rank-00000"
    rank_dir.mkdir(parents=True)
    (rank_dir / "rank.json").write_text(
        json.dumps({"rank": 0, "host": "h", "pid": int(gone.stdout)})
    )
    thread = native_stacks([rank_dir])
    assert thread is not None  # py-spy is in the test extras
    thread.join(30)
    answer = json.loads((rank_dir / "native_stacks.json").read_text())
    assert answer["error"] and "threads" not in answer, answer
