"""The analyzers on real torchrun jobs with real faults injected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import demo_job, launch, report_json

pytestmark = pytest.mark.slow


def _warnings(report: dict) -> list[dict]:
    return [f for f in report["findings"] if f["severity"] in ("warning", "critical")]


def test_report_names_the_rank_that_burns_extra_cpu_each_step(run_dir: Path) -> None:
    steps, slow_ms = 60, 20.0
    result = launch(
        run_dir,
        3,
        demo_job(
            "--steps", str(steps), "--work-ms", "10", "--slow-rank", "1", "--slow-ms", str(slow_ms)
        ),
    )
    assert result.returncode == 0, result.stderr
    report = report_json(run_dir)
    warnings = _warnings(report)
    stragglers = [f for f in warnings if f["kind"] == "straggler"]
    assert [f["ranks"] for f in stragglers] == [[1]], warnings
    assert stragglers[0]["cause"] == "slow_compute"
    injected = slow_ms / 1e3 * steps
    assert abs(stragglers[0]["time_lost_s"] - injected) <= 0.25 * injected
    assert report["findings"][0] == stragglers[0]  # the biggest cost comes first


def test_slow_dataloader_on_one_rank_is_data_loading(run_dir: Path) -> None:
    result = launch(
        run_dir,
        2,
        demo_job(
            "--steps", "50", "--work-ms", "10", "--slow-data-rank", "0", "--slow-data-ms", "25"
        ),
    )
    assert result.returncode == 0, result.stderr
    stragglers = [f for f in _warnings(report_json(run_dir)) if f["kind"] == "straggler"]
    assert len(stragglers) == 1
    assert stragglers[0]["ranks"] == [0] and stragglers[0]["cause"] == "data_loading"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to pin ranks apart")
def test_rank_sharing_its_core_with_a_cpu_hog_is_host_contention(run_dir: Path) -> None:
    hog = subprocess.Popen(
        [sys.executable, "-c", "import os\nos.sched_setaffinity(0, {1})\nwhile True: pass"]
    )
    try:
        result = launch(
            run_dir,
            2,
            demo_job("--steps", "60", "--work-ms", "0", "--fixed-work", "300", "--pin"),
            extra_launch=["--interval", "0.2"],
        )
    finally:
        hog.kill()
        hog.wait()
    assert result.returncode == 0, result.stderr
    stragglers = [f for f in _warnings(report_json(run_dir)) if f["kind"] == "straggler"]
    assert len(stragglers) == 1, stragglers
    assert stragglers[0]["ranks"] == [1] and stragglers[0]["cause"] == "host_contention"
    assert stragglers[0]["evidence"]["cpu_wait_s_per_s"] > 0.3


def test_job_that_slows_down_partway_is_one_slowdown_and_no_straggler(run_dir: Path) -> None:
    at = 40
    result = launch(
        run_dir,
        2,
        demo_job(
            "--steps", "90", "--work-ms", "10", "--slowdown-at-step", str(at), "--slowdown-ms", "25"
        ),
    )
    assert result.returncode == 0, result.stderr
    warnings = _warnings(report_json(run_dir))
    slowdowns = [f for f in warnings if f["kind"] == "slowdown"]
    assert len(slowdowns) == 1, warnings
    assert abs(slowdowns[0]["evidence"]["start_step"] - at) <= 3
    assert slowdowns[0]["cause"] == "slow_compute"
    assert not [f for f in warnings if f["kind"] == "straggler"]


def test_killed_rank_is_a_hang_naming_it_and_where_the_others_wait(run_dir: Path) -> None:
    result = launch(
        run_dir,
        3,
        demo_job("--steps", "400", "--work-ms", "10", "--die-rank", "2", "--die-at-step", "40"),
        timeout=180,
    )
    assert result.returncode != 0
    hangs = [f for f in report_json(run_dir)["findings"] if f["kind"] == "hang"]
    assert len(hangs) == 1 and hangs[0]["ranks"] == [2]
    assert hangs[0]["severity"] == "critical" and hangs[0]["cause"] == "missing_rank"
    stopped = hangs[0]["evidence"]["stopped"]["2"]
    assert stopped["last_seq"] < stopped["others_reached"]


@pytest.mark.parametrize("attempt", [1, 2])
def test_clean_run_of_hundreds_of_steps_has_no_warning(run_dir: Path, attempt: int) -> None:
    # Two ranks on this machine's two cores: a third rank would share a core, and a rank
    # that really gets less CPU is a finding, not a clean run.
    result = launch(run_dir, 2, demo_job("--steps", "300", "--work-ms", "8"))
    assert result.returncode == 0, result.stderr
    assert _warnings(report_json(run_dir)) == []
