"""Capture completeness on the training stacks people run, against PyTorch's own record.

Each test runs a real 2- or 4-rank job under `mrcdiag launch --verify-capture`, which
turns PyTorch's flight recorder on in every rank and fails (exit 3) when its per-rank,
per-group, per-op counts differ from ours. Gloo's flight recorder has no point-to-point
operations: for pipelines the job counts them with torch.profiler (tests/jobs/stacks).
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import (
    job_env,
    launch,
    live_warnings_of_a_clean_run,
    read_json_file,
    report_json,
    script,
    warnings_of_a_clean_run,
)

from mrcdiag.report.capture import verify_run
from mrcdiag.store import layout, schema
from mrcdiag.store.reader import read_run

pytestmark = pytest.mark.slow


def _needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (scripts/test.sh installs it)")


def _run_stack(run_dir: Path, job: str, nproc: int = 2, **env: str) -> tuple[dict, list[str], Path]:
    truth = run_dir.parent / "truth.json"
    result = launch(
        run_dir,
        nproc,
        script(f"stacks/{job}"),
        timeout=240,
        extra_launch=["--verify-capture"],
        env=job_env(STACK_TRUTH=str(truth), **env),
    )
    said = [line for line in result.stderr.splitlines() if line.startswith("mrcdiag: ")]
    assert result.returncode == 0, "\n".join(said) + result.stderr[-3000:]
    checks = [line for line in said if "capture check" in line]
    assert checks and "every one recorded by mrcdiag" in checks[0], said
    return read_json_file(truth), said, truth


def _steps_per_rank(run_dir: Path) -> dict[int, int]:
    run = read_run(run_dir)
    return dict(Counter(int(r) for r in run.steps["rank"]))


def _no_warning(run_dir: Path) -> None:
    """A clean run of a real training loop: nothing to warn about (issue #13)."""
    assert warnings_of_a_clean_run(report_json(run_dir)) == []
    assert live_warnings_of_a_clean_run(run_dir) == []


def _collectives_compared(said: list[str]) -> int:
    line = next(line for line in said if "capture check" in line)
    return int(line.split("capture check: ")[1].split()[0])


def test_hugging_face_trainer_every_collective_and_step(run_dir: Path) -> None:
    _needs("transformers")
    truth, said, _ = _run_stack(run_dir, "hf_trainer.py")
    assert _collectives_compared(said) > 0
    assert set(_steps_per_rank(run_dir).values()) == {truth["optimizer_steps"]}
    run = read_run(run_dir)
    ddp = run.collectives.where(run.collectives["source"] == schema.SOURCE_CODE["ddp"])
    ops = {schema.OPS[o] for o in ddp["op"]}
    # DDP's own: the parameter-shape check and the start-up broadcasts, beside its buckets
    assert {"all_gather", "broadcast", "all_reduce"} <= ops
    _no_warning(run_dir)


def test_lightning_ddp_every_collective_and_step(run_dir: Path) -> None:
    _needs("lightning")
    truth, said, _ = _run_stack(run_dir, "lightning_ddp.py")
    assert _collectives_compared(said) > 0
    assert set(_steps_per_rank(run_dir).values()) == {truth["optimizer_steps"]}
    _no_warning(run_dir)


def test_fsdp2_with_a_checkpoint_gather_every_collective(run_dir: Path) -> None:
    truth, said, _ = _run_stack(run_dir, "fsdp2.py")
    assert _collectives_compared(said) > 0
    assert set(_steps_per_rank(run_dir).values()) == {truth["optimizer_steps"]}
    run = read_run(run_dir)
    functional = run.collectives["source"] == schema.SOURCE_CODE["functional"]
    # full_tensor() of every parameter: functional all-gathers, each one completed
    assert functional.sum() > 0
    assert (run.collectives["t_end_ns"][functional] > 0).all()
    capture = report_json(run_dir)["summary"]["capture"]
    assert capture["by_source"]["functional"] == functional.sum()
    assert capture["incomplete"] == 0


def test_tensor_parallel_set_up_only_by_init_device_mesh(run_dir: Path) -> None:
    truth, said, _ = _run_stack(run_dir, "tp_mesh.py")
    assert _collectives_compared(said) > 0
    run = read_run(run_dir)
    assert sorted(run.ranks) == [0, 1], "both ranks attached without init_process_group"
    assert set(_steps_per_rank(run_dir).values()) == {truth["optimizer_steps"]}
    labels = {g.label for g in run.groups}
    assert "world 0-1" in labels, labels
    # the check can fail: take one all_reduce out of rank 1's flight recorder dump
    dump_path = layout.rank_dir(run_dir, 1) / layout.FLIGHT_RECORDER_FILE
    dump = json.loads(dump_path.read_text())
    last = max(
        i for i, e in enumerate(dump["entries"]) if e["profiling_name"].endswith("all_reduce")
    )
    del dump["entries"][last]
    dump_path.write_text(json.dumps(dump))
    ok, lines = verify_run(run_dir)
    assert not ok
    assert any("rank 1 group 0 all_reduce: mrcdiag" in line for line in lines), lines


def test_two_d_mesh_groups_are_named_by_dimension_and_ranks(run_dir: Path) -> None:
    truth, said, _ = _run_stack(run_dir, "dp_tp_2d.py", nproc=4)
    assert _collectives_compared(said) > 0
    assert _steps_per_rank(run_dir) == {r: truth["optimizer_steps"] for r in range(4)}
    run = read_run(run_dir)
    assert {g.label for g in run.groups} == {"tp 0-1", "tp 2-3", "dp 0, 2", "dp 1, 3"}
    per_op = report_json(run_dir)["summary"]["per_op"]
    # groups of equal size are never merged: each tp pair has its own rows
    assert {o["group"] for o in per_op if o["op"] == "all_reduce"} == {"tp 0-1", "tp 2-3"}


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_point_to_point_against_the_profiler(run_dir: Path, schedule: str) -> None:
    steps, _, truth = _run_stack(run_dir, "pipeline.py", STACK_SCHEDULE=schedule)
    assert set(_steps_per_rank(run_dir).values()) == {steps["optimizer_steps"]}
    run = read_run(run_dir)
    c = run.collectives
    for rank in (0, 1):
        expected = json.loads(Path(f"{truth}.rank{rank}").read_text())["p2p"]
        mine = [schema.OPS[o] for o in c.where(c["rank"] == rank)["op"]]
        sends = sum(op in ("send", "isend") for op in mine)
        receives = sum(op in ("recv", "irecv") for op in mine)
        assert (sends, receives) == (expected["send"], expected["recv"]), rank
    peers = report_json(run_dir)["summary"]["per_peer"]
    assert {(p["sender"], p["receiver"]) for p in peers} == {(0, 1), (1, 0)}
    assert all(p["sends"] == p["receives"] > 0 for p in peers)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_a_clean_pipeline_has_no_warning(run_dir: Path, schedule: str) -> None:
    env = job_env(STACK_SCHEDULE=schedule, STACK_STEPS="20", STACK_PROFILE="0")
    result = launch(run_dir, 2, script("stacks/pipeline.py"), timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # No stage, rank or link is blamed. (A job-wide slowdown stays reportable: on a
    # shared machine the whole job's pace can really change mid-run.)
    serious = [
        f
        for f in report_json(run_dir)["findings"]
        if f["severity"] != "info" and f["kind"] != "slowdown"
    ]
    assert serious == [], serious


def test_a_pipeline_stage_with_more_layers_is_stage_imbalance(run_dir: Path) -> None:
    result = launch(
        run_dir,
        2,
        script("stacks/pipeline.py"),
        timeout=240,
        env=job_env(
            STACK_SCHEDULE="1f1b", STACK_SLOW_STAGE="1", STACK_STEPS="80", STACK_PROFILE="0"
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    serious = [f for f in report_json(run_dir)["findings"] if f["severity"] != "info"]
    # one finding for the stage, not a straggler of every rank, nor exposed communication
    assert [(f["kind"], f["cause"], f["ranks"]) for f in serious] == [
        ("straggler", "stage_imbalance", [1])
    ], serious


def test_a_pipeline_stage_stopped_from_outside_now_and_then_is_named(run_dir: Path) -> None:
    """SIGSTOP 40 ms of every 100 ms on stage 1, as a throttled VM: no stage works more in
    most steps (no imbalance), no collective to arrive late at; stage 1's own work jumps
    now and then while stage 0 waits in its receives."""
    import subprocess

    from conftest import REPO, launch_command, torchrun
    from outside import stopped_on_a_duty_cycle

    env = job_env(STACK_SCHEDULE="1f1b", STACK_STEPS="200", STACK_PROFILE="0")
    cmd = launch_command(run_dir, torchrun(2, script("stacks/pipeline.py")))
    job = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    with stopped_on_a_duty_cycle(run_dir, 1, job, 0.04, 0.1):
        _, stderr = job.communicate(timeout=240)
    assert job.returncode == 0, stderr[-3000:]
    serious = [f for f in report_json(run_dir)["findings"] if f["severity"] != "info"]
    assert [(f["kind"], f["ranks"]) for f in serious] == [("straggler", [1])], serious
    (finding,) = serious
    # its own clocks: off the CPU without waiting for one (or, on 2 busy cores, waiting)
    assert finding["cause"] in ("unknown", "host_contention"), finding
    assert finding["evidence"]["steps_held_up"] >= 5, finding["evidence"]


def test_a_slow_rank_in_a_device_mesh_job_is_named(run_dir: Path) -> None:
    result = launch(
        run_dir,
        2,
        script("stacks/tp_mesh.py"),
        timeout=240,
        env=job_env(STACK_STEPS="60", STACK_SLOW_RANK="1", STACK_SLOW_S="0.02"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    findings = report_json(run_dir)["findings"]
    stragglers = [f for f in findings if f["kind"] == "straggler" and f["severity"] != "info"]
    assert [f["ranks"] for f in stragglers] == [[1]], findings
