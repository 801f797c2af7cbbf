"""The live analysis on real jobs: findings while the job trains, within seconds."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from conftest import STOPS_WITHIN_S, demo_job, live_warnings_of_a_clean_run, report_json
from livejob import LiveJob, step_unix_s

# The budget from a fault's onset to its finding on /metrics and stderr
pytestmark = pytest.mark.slow

WITHIN_S = 15.0


def test_rank_slower_partway_is_a_live_straggler_within_seconds_with_the_reports_cause(
    run_dir: Path,
) -> None:
    onset_step = 150
    job = LiveJob.start(
        run_dir, 3,
        demo_job("--steps", "450", "--work-ms", "10", "--slow-rank", "1", "--slow-ms", "30",
                 "--slow-from-step", str(onset_step)),
    )  # fmt: skip
    assert job.wait(240) == 0, job.said()
    onset = step_unix_s(run_dir, 1, onset_step)
    line = next(
        (s for s in job.lines if "straggler rank 1 " in s.text and "WARNING" in s.text
         or "straggler rank 1 " in s.text and "CRITICAL" in s.text),
        None,
    )  # fmt: skip
    assert line is not None, job.said()
    assert line.t_unix_s - onset <= WITHIN_S, (line, onset)
    on_metrics = [
        a for a in job.active
        if a.labels["kind"] == "straggler" and a.labels["rank"] == "1"
        and a.labels["severity"] in ("warning", "critical")
    ]  # fmt: skip
    assert on_metrics and on_metrics[0].t_unix_s - onset <= WITHIN_S, job.said()
    before = [
        a for a in job.active
        if a.t_unix_s < onset and a.labels["severity"] in ("warning", "critical")
    ]  # fmt: skip
    assert before == [], before
    report = report_json(run_dir)
    post = [f for f in report["findings"] if f["kind"] == "straggler" and f["ranks"] == [1]]
    assert post and post[0]["cause"] == on_metrics[0].labels["cause"], (post, on_metrics[0])
    assert post[0]["evidence"]["first_seen_live"].startswith("step ")
    started = [
        x for x in job.live_lines() if x["event"] == "start" and x["finding"]["ranks"] == [1]
    ]
    assert started and abs(started[0]["started_step"] - onset_step) <= 15, started


def test_rank_blocked_in_its_own_code_is_a_live_hang_while_the_job_still_hangs(
    run_dir: Path,
) -> None:
    hang_after_s, at_step = 5.0, 60
    job = LiveJob.start(
        run_dir, 3,
        demo_job("--steps", "400", "--work-ms", "10", "--hang-rank", "2",
                 "--hang-at-step", str(at_step)),
        extra=["--hang-after", str(hang_after_s)],
    )  # fmt: skip
    try:
        line = job.wait_for_line(r"CRITICAL hang rank 2\b", timeout_s=120)
        assert line is not None, job.said()
        assert job.process.poll() is None  # said while the job still hangs
        stuck_since = step_unix_s(run_dir, 2, at_step - 1, end=True)
        assert line.t_unix_s - stuck_since <= hang_after_s + WITHIN_S, (line, stuck_since)
        assert "never arrived at all_reduce" in line.text, line.text
    finally:
        job.process.send_signal(signal.SIGTERM)
        job.wait(STOPS_WITHIN_S)
    hangs = [x["finding"] for x in job.live_lines() if x["finding"]["kind"] == "hang"]
    assert hangs and hangs[0]["ranks"] == [2] and hangs[0]["cause"] == "missing_rank"
    evidence = hangs[0]["evidence"]
    assert evidence["waiting_ranks"] == [0, 1]
    assert evidence["collective"]["op"] == "all_reduce" and evidence["collective"]["seq"] > 0


def test_job_wide_slowdown_is_found_live_with_its_onset_step(run_dir: Path) -> None:
    # 40 ms more on a ~25 ms step: beyond the noise of a machine with a busy core, where
    # the step time's spread reaches 10 ms (15 ms more was not, after the run either)
    at_step = 200
    job = LiveJob.start(
        run_dir, 2,
        demo_job("--steps", "320", "--work-ms", "10", "--slowdown-at-step", str(at_step),
                 "--slowdown-ms", "40"),
    )  # fmt: skip
    assert job.wait(240) == 0, job.said()
    slowdowns = [
        x for x in job.live_lines() if x["event"] == "start" and x["finding"]["kind"] == "slowdown"
    ]
    assert len(slowdowns) == 1, job.said()
    # where it began, as the live analysis last placed it (the start's first estimate
    # moves while the slowdown is young: see LiveAnalysis._refine_onset)
    last = [x for x in job.live_lines() if x["key"] == slowdowns[0]["key"]][-1]
    assert abs(last["started_step"] - at_step) <= 5, last
    assert slowdowns[0]["finding"]["severity"] in ("warning", "critical")
    assert any("slowdown (every rank)" in s.text for s in job.lines), job.said()
    assert not [f for f in live_warnings_of_a_clean_run(run_dir) if f["kind"] == "straggler"]


def test_clean_run_has_no_live_warning_from_start_to_end(run_dir: Path) -> None:
    steps = 400
    job = LiveJob.start(run_dir, 2, demo_job("--steps", str(steps), "--work-ms", "8"))
    assert job.wait(240) == 0, job.said()
    assert live_warnings_of_a_clean_run(run_dir) == []
    assert not [s for s in job.lines if "WARNING" in s.text or "CRITICAL" in s.text]
    # and the analysis did judge the run as it went, not just its start
    assert job.newest_step >= steps // 2, job.newest_step


def _in_a_pseudo_terminal(argv: list[str], timeout_s: float = 60) -> str:
    """Run argv with a real pseudo-terminal as its stdout, and return what it drew."""
    import os
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout is the terminal
        os.environ.update({"COLUMNS": "160", "LINES": "40", "TERM": "xterm-256color"})
        os.execvpe(argv[0], argv, os.environ)
    out = b""
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.waitpid(pid, 0)
        os.close(fd)
    return out.decode(errors="replace")


def test_watch_shows_the_ranks_and_findings_of_a_running_job_in_a_terminal_and_plain(
    run_dir: Path,
) -> None:
    import subprocess
    import sys

    job = LiveJob.start(
        run_dir, 3,
        demo_job("--steps", "3000", "--work-ms", "10", "--slow-rank", "2", "--slow-ms", "30"),
    )  # fmt: skip
    try:
        assert job.wait_for_line(r"straggler rank 2\b", timeout_s=120), job.said()
        assert job.url is not None
        watch = [sys.executable, "-m", "mrcdiag.cli", "watch", "--count", "3"]
        drawn = _in_a_pseudo_terminal([*watch, "--url", job.url])
        assert "\x1b[" in drawn  # drawn for a terminal: escape sequences, not lines
        for text in ("late ms", "data wait ms", "collectives ms", "straggler rank 2"):
            assert text in drawn, drawn[-3000:]
        rows = [line for line in drawn.splitlines() if line.strip().startswith("2 ")]
        assert rows, drawn[-3000:]
        plain = subprocess.run(
            [*watch, "--interval", "0.5", str(run_dir)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        lines = plain.stdout.splitlines()
        assert plain.returncode == 0 and len(lines) == 3, plain.stdout + plain.stderr
        assert "\x1b[" not in plain.stdout
        assert "most late: rank 2" in lines[-1] and "straggler rank 2" in lines[-1], lines
    finally:
        job.process.send_signal(signal.SIGTERM)
        job.wait(STOPS_WITHIN_S)
