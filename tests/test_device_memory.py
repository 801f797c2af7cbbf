"""The rank's device memory at step boundaries, and memory_pressure as a straggler's cause."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import launch, report_json, script, warnings_of_a_clean_run
from fakes.fake_allocator import GIB, FakeAllocator

from mrcdiag.capture.device_memory import NOT_KNOWN, DeviceMemory
from mrcdiag.collectors.ranks import RankCollector
from mrcdiag.store.reader import read_run


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [2, 3])
def test_a_rank_whose_allocator_retries_every_few_steps_is_memory_pressure(
    run_dir: Path, nproc: int
) -> None:
    result = launch(run_dir, nproc, script("allocator_retries.py", "--retry-rank", "1"))
    assert result.returncode == 0, result.stderr
    steps = read_run([run_dir]).steps
    mine = steps["rank"] == 1
    assert steps["mem_total_bytes"][mine][0] == 24 * GIB
    assert steps["mem_alloc_retries"][mine].max() == 16  # 80 steps, every 5th
    assert steps["mem_alloc_retries"][steps["rank"] == 0].max() == 0
    device = read_run([run_dir]).ranks[1].device  # which GPU, and where the rank may run
    assert device["pci_bus_id"] == "00000000:18:00.0" and device["cpus"], device
    report = report_json(run_dir)
    serious = [f for f in report["findings"] if f["severity"] in ("warning", "critical")]
    assert [(f["kind"], f["cause"], f["ranks"]) for f in serious] == [
        ("straggler", "memory_pressure", [1])
    ], serious
    assert serious[0]["evidence"]["alloc_retries"] >= 10, serious[0]["evidence"]
    headroom = {r["rank"]: r["memory_peak_of_total"] for r in report["summary"]["per_rank"]}
    assert headroom[0] == pytest.approx(0.75) and headroom[1] > 0.95, headroom
    # and per rank on the node agent's /metrics, from the same records
    host = read_run([run_dir]).ranks[1].host
    served = {
        (m.name, s.labels["rank"]): s.value
        for m in RankCollector(run_dir, "j", host).collect()
        for s in m.samples
        if m.name.startswith("mrcdiag_rank_memory")
    }
    assert served[("mrcdiag_rank_memory_alloc_retries", "1")] == 16
    assert served[("mrcdiag_rank_memory_alloc_retries", "0")] == 0
    assert served[("mrcdiag_rank_memory_total_bytes", str(nproc - 1))] == 24 * GIB


@pytest.mark.slow
def test_a_job_whose_allocators_all_start_retrying_slows_down_of_memory_pressure(
    run_dir: Path,
) -> None:
    result = launch(
        run_dir, 2,
        script("allocator_retries.py", "--steps", "120", "--all-from-step", "60",
               "--stall-ms", "30"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (slowdown,) = [f for f in report_json(run_dir)["findings"] if f["kind"] == "slowdown"]
    assert slowdown["cause"] == "memory_pressure", slowdown
    onset = slowdown["evidence"]["start_step"]
    assert abs(onset - 60) <= 5, slowdown["evidence"]
    # every step from 60 retries: the share after the onset found is all of them, less
    # the steps before 60 that a change point placed early takes in (beside a busy core
    # one was: 0.984)
    expected = min(1.0, (120 - 60) / (120 - onset))
    after = slowdown["evidence"]["steps_with_alloc_retries_after"]
    assert after >= expected - 0.01, slowdown["evidence"]


@pytest.mark.slow
def test_the_same_job_without_retries_has_no_warning(run_dir: Path) -> None:
    result = launch(run_dir, 3, script("allocator_retries.py"))
    assert result.returncode == 0, result.stderr
    assert warnings_of_a_clean_run(report_json(run_dir)) == []


def test_reading_needs_a_device_the_job_set_up_and_stops_after_a_failure(monkeypatch) -> None:
    import torch

    reader = DeviceMemory()
    assert reader.read() == NOT_KNOWN  # a CPU job: CUDA never initialized, and not by us
    assert not torch.cuda.is_initialized()
    fake = FakeAllocator()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "memory_stats", fake.memory_stats)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda d: type("P", (), {"total_memory": 24 * GIB})
    )
    fake.retry()
    assert reader.read() == (16 * GIB, 18 * GIB, 17 * GIB, 24 * GIB - GIB // 4, 1, 0, 24 * GIB)

    def broken(device=None):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.cuda, "memory_stats", broken)
    assert reader.read() == NOT_KNOWN
    monkeypatch.setattr(torch.cuda, "memory_stats", fake.memory_stats)
    assert reader.read() == NOT_KNOWN  # off for the rest of the run, said once
