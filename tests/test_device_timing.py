"""CUDA collectives are timed on the device: events resolved by the writer thread.

No GPU here: the CUDA calls go to tests/fakes/fake_cuda.py, whose stream runs 250 ms
behind the host; everything above that boundary (hook, device timer, recorder, writer
thread, run directory) is the real code in a real process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import JOBS, job_env

from mrcdiag.store.reader import read_run

MS = 1_000_000
DELAY_NS = 250 * MS
SLACK_NS = 100 * MS  # the Python between taking the host mark and recording the event


def _run(tmp_path: Path, mode: str) -> tuple[dict, np.ndarray, np.ndarray, list[dict]]:
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(JOBS / "device_timed.py"), str(run_dir), mode],
        capture_output=True,
        text=True,
        env=job_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    host = json.loads(done.stdout.strip().splitlines()[-1])
    run = read_run(run_dir)
    order = np.argsort(run.collectives["seq"])
    events_file = next(run_dir.glob("ranks/*/events.jsonl"))
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    return host, run.collectives["t_arrive_ns"][order], run.collectives["t_end_ns"][order], events


def test_cuda_collectives_get_device_times_and_none_is_lost(tmp_path: Path) -> None:
    host, arrive, end, events = _run(tmp_path, "ok")
    assert len(arrive) == 5  # sync, async, held then released, CPU, never completed
    for i, mark in enumerate(("sync", "async", "held")):
        late = arrive[i] - host[mark]
        assert DELAY_NS <= late < DELAY_NS + SLACK_NS, (mark, late / MS)
        assert end[i] >= arrive[i]
    assert host["queued_while_held"] == 1 and host["queued_after_release"] == 0
    assert 0 <= arrive[3] - host["cpu"] < DELAY_NS  # the CPU collective: host time
    never = arrive[4] - host["never_done"]  # still on the GPU at exit: kept, host time
    assert 0 <= never < SLACK_NS, never / MS
    # not done on the GPU: the writer says where the rank is stuck, as for a host wait
    stuck = [e for e in events if e["event"] == "in_collective"]
    assert [(e["op"], e["seq"]) for e in stuck] == [("all_reduce", 5)]


def test_failing_device_timer_keeps_host_times_and_recording(tmp_path: Path) -> None:
    host, arrive, _, events = _run(tmp_path, "fail")
    assert len(arrive) == 5
    for i, mark in enumerate(("sync", "async", "held")):
        assert 0 <= arrive[i] - host[mark] < SLACK_NS, mark
    off = [e for e in events if e["event"] == "device_timing_off"]
    assert len(off) == 1 and "illegal memory access" in off[0]["reason"]
    assert not [e for e in events if e["event"] == "disabled"]


def test_device_timing_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from fakes import fake_cuda

    from mrcdiag.capture.device_timer import DeviceTimer, device_timer_for

    torch_with_a_gpu = types.SimpleNamespace(cuda=fake_cuda, _C=types.SimpleNamespace())
    assert isinstance(device_timer_for(torch_with_a_gpu), DeviceTimer)
    monkeypatch.setenv("MRCDIAG_DEVICE_TIMING", "0")
    assert device_timer_for(torch_with_a_gpu) is None
