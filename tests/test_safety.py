"""mrcdiag failing inside a job never fails the job; the API works without launch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, job_env, launch, mrcdiag, script, torchrun

from mrcdiag.capture.autoimport import BOOT_DIR
from mrcdiag.store.reader import read_run

pytestmark = pytest.mark.slow


def test_failure_inside_the_hook_is_one_warning_and_the_job_succeeds(run_dir: Path) -> None:
    result = launch(run_dir, 2, script("broken_recorder.py"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("stopped recording") == 2  # one per rank, not per collective
    assert "Traceback" not in result.stderr
    run = read_run(run_dir)
    assert run.ranks[0].disabled_reason and "injected failure" in run.ranks[0].disabled_reason


def test_unwritable_run_directory_leaves_the_job_running(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = job_env(
        MRCDIAG_RUN_DIR=str(blocker / "run"),
        PYTHONPATH=f"{BOOT_DIR}:{REPO}",
    )
    proc = subprocess.run(
        torchrun(2, script("late_rank.py", "--delay", "0", "--rounds", "2")),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "not recording this rank" in proc.stderr


def test_attach_and_step_by_hand_without_launch(tmp_path: Path) -> None:
    run_dir = tmp_path / "api-run"
    proc = subprocess.run(
        torchrun(2, script("api_attach.py", str(run_dir))),
        capture_output=True,
        text=True,
        timeout=120,
        env=job_env(),
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    run = read_run(run_dir)
    assert run.run is not None and run.run.job == "api"
    for rank in (0, 1):
        mine = run.steps.where(run.steps["rank"] == rank)
        assert list(mine["step"]) == [0, 1, 2, 3, 4]
        assert list(mine["n_collectives"]) == [2] * 5
        assert (mine["comm_ns"] > 0).all()
        # the stepping thread's own clocks: on a CPU for part of the step, never more
        assert (mine["cpu_ns"] > 0).all() and (mine["cpu_wait_ns"] >= 0).all()
        assert (mine["cpu_ns"] <= mine["t_end_ns"] - mine["t_start_ns"]).all()


def test_sigterm_during_the_final_close_keeps_every_record(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "jobs" / "sigterm_while_closing.py"),
            str(run_dir),
            "7",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=job_env(),
        cwd=REPO,
    )
    assert proc.returncode == -signal.SIGTERM, proc.stderr  # it still dies of the signal
    assert "survived SIGTERM" not in proc.stdout
    run = read_run(run_dir)
    assert len(run.collectives) == 7  # all of them reached the disk before it died
    assert run.ranks[0].closed_cleanly


def test_launch_and_report_say_plainly_when_no_rank_attached(run_dir: Path) -> None:
    result = launch(run_dir, 2, script("no_process_group.py"))
    assert result.returncode == 0, result.stderr
    assert "mrcdiag: no rank attached, so nothing was recorded" in result.stderr
    proc = mrcdiag("report", str(run_dir))
    assert proc.returncode != 0
    assert "init_device_mesh" in proc.stderr and "Traceback" not in proc.stderr


def test_report_says_which_rank_never_attached_and_why(tmp_path: Path) -> None:
    from mrcdiag.store import layout
    from mrcdiag.store.synthetic import SyntheticSpec, write_synthetic_run

    run_dir = tmp_path / "run"
    write_synthetic_run(run_dir, SyntheticSpec(ranks=2, ranks_per_host=2, steps=20))
    failed = layout.rank_dir(run_dir, 2)
    failed.mkdir(parents=True)
    (failed / layout.ATTACH_FAILED_FILE).write_text('{"reason": "OSError(28, \'No space\')"}')
    run = read_run(run_dir)
    assert any("rank-00002 never attached: OSError(28" in p for p in run.problems), run.problems


def test_compiled_collectives_still_compile_whole_under_mrcdiag(run_dir: Path) -> None:
    result = launch(run_dir, 2, script("compiled_collectives.py"), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_nothing_of_mrcdiag_imports_pandas_into_the_job_or_the_agent(tmp_path: Path) -> None:
    # pyarrow's pa.array() imports pandas where it is installed (most training
    # environments): 0.26 s of CPU in each rank's writer thread during the first steps.
    # A pandas that notes who imported it, then is not there, stands in for it.
    tripwire = tmp_path / "tripwire" / "pandas"
    tripwire.mkdir(parents=True)
    marks = tmp_path / "marks"
    marks.mkdir()
    (tripwire / "__init__.py").write_text(
        "import os, sys, traceback\n"
        f"with open(os.path.join({str(marks)!r}, str(os.getpid())), 'w') as f:\n"
        "    f.write(' '.join(sys.argv) + '\\n' + ''.join(traceback.format_stack()))\n"
        "raise ImportError('pandas is not installed here')\n"
    )
    env = job_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tripwire.parent), env["PYTHONPATH"]])
    run_dir = tmp_path / "run"
    # 200 steps: past twice the live window, where the agent trims what it keeps
    steps = 200
    job = ["-m", "mrcdiag.demo_job", "--steps", str(steps), "--work-ms", "4"]
    result = launch(run_dir, 2, job, env=env)
    assert result.returncode == 0, result.stderr
    assert len(read_run(run_dir).steps) == 2 * steps  # it did record
    imported = {p.name: p.read_text() for p in marks.iterdir()}
    assert imported == {}, imported
