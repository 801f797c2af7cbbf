"""On a real NVIDIA GPU: NVML through the real pynvml, collectives timed with real CUDA
events, and a straggler whose lateness only the device sees.

Skipped where there is no CUDA GPU (this machine and CI); run them where there is one:
    python -m pytest -m gpu tests/test_gpu.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import job_env, launch, report_json, script

from mrcdiag.store.reader import read_run
from mrcdiag.store.schema import OPS, SOURCES

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
MS = 1_000_000


def _values(samples, name: str) -> dict:
    return {s.labels: s.value for s in samples if s.name == name}


def test_nvml_collector_reads_the_real_gpu_while_it_works() -> None:
    import os

    import pynvml

    from mrcdiag import log
    from mrcdiag.collectors import nvml as nvml_collector

    torch.cuda.init()
    a = torch.randn(8192, 8192, device="cuda")
    me = lambda: [(0, 0, os.getpid())]  # noqa: E731
    collector = nvml_collector.create({"job": "t", "node": "n"}, me, nvml=pynvml)
    assert collector is not None and collector.count == torch.cuda.device_count()
    collector.read()  # GPM rates need two samples
    for _ in range(200):  # about a second of matrix products between the two samples
        a = torch.tanh(a @ a)
    torch.cuda.synchronize()
    samples = collector.read()
    gpu0 = (("gpu", "0"),)
    assert (
        _values(samples, "mrcdiag_gpu_up")[
            (("gpu", "0"), ("uuid", collector.uuids[0]), ("name", collector.names[0]))
        ]
        == 1.0
    )
    total = _values(samples, "mrcdiag_gpu_memory_total_bytes")[gpu0]
    assert total == pytest.approx(torch.cuda.get_device_properties(0).total_memory, rel=0.05)
    assert _values(samples, "mrcdiag_gpu_memory_used_bytes")[gpu0] >= 256 << 20
    assert 0.0 < _values(samples, "mrcdiag_gpu_utilization_ratio")[gpu0] <= 1.0
    sm = _values(samples, "mrcdiag_gpu_sm_clock_hertz")[gpu0]
    assert 100e6 < sm <= _values(samples, "mrcdiag_gpu_sm_clock_max_hertz")[gpu0]
    assert 10 < _values(samples, "mrcdiag_gpu_power_watts")[gpu0] < 2000
    assert 10 < _values(samples, "mrcdiag_gpu_temperature_celsius")[gpu0] < 110
    reasons = {
        dict(k)["reason"]
        for k in _values(samples, "mrcdiag_gpu_clock_event_active")
        if k[0] == gpu0[0]
    }
    assert reasons == set(nvml_collector.CLOCK_EVENT_REASONS.values())
    assert (("gpu", "0"), ("rank", "0"), ("local_rank", "0"), ("pid", str(os.getpid()))) in (
        _values(samples, "mrcdiag_gpu_rank_info")
    )
    if collector.gpm_supported.get(0):  # Hopper and later: rates from GPM
        assert 0.0 < _values(samples, "mrcdiag_gpu_sm_activity_ratio")[gpu0] <= 1.0
        assert gpu0 in _values(samples, "mrcdiag_gpu_memory_bandwidth_utilization_ratio")
    assert not [k for k in log._said if k.startswith("nvml-")], log._said


def test_collective_queued_behind_gpu_work_arrives_when_the_device_gets_there(
    run_dir: Path, tmp_path: Path
) -> None:
    marks = tmp_path / "marks.json"
    result = launch(
        run_dir, 1, script("gpu_ddp.py", "--steps", "20"), env=job_env(HOST_MARKS=str(marks))
    )
    assert result.returncode == 0, result.stderr
    host = json.loads(marks.read_text())
    run = read_run(run_dir)
    assert not run.problems
    c = run.collectives
    order = np.argsort(c["seq"])
    ops = [OPS[int(o)] for o in c["op"][order]]
    queued = next(i for i, op in enumerate(ops) if op == "all_reduce")
    arrive = int(c["t_arrive_ns"][order][queued])
    # The host called it at once; the device reached it after ~50 ms of queued work.
    assert arrive - host["queued_call_ns"] >= 30 * MS, (arrive - host["queued_call_ns"]) / MS
    ddp = c["nbytes"][order][queued + 1 :] > 0
    assert ddp.sum() >= 20  # DDP's all-reduces, one bucket or more per step
    assert np.all(c["t_end_ns"] >= c["t_arrive_ns"])
    per_op = {o["op"]: o for o in report_json(run_dir)["summary"]["per_op"]}
    assert per_op["all_reduce"]["calls"] == int((c["op"] == OPS.index("all_reduce")).sum())
    # each step's device memory, from the rank's own allocator, and the node's topology
    steps = run.steps
    assert (steps["mem_allocated_bytes"] > 0).all() and (steps["mem_total_bytes"] > 0).all()
    assert (steps["mem_peak_allocated_bytes"] >= steps["mem_allocated_bytes"]).all()
    (topology,) = run.topology.values()
    (rank,) = run.ranks.values()
    assert rank.device and rank.device["pci_bus_id"], rank.device
    buses = [g["bus_id"].lower() for g in topology["gpus"]]
    assert rank.device["pci_bus_id"].lower() in buses, (rank.device, buses)


def test_rank_whose_gpu_is_late_is_the_straggler_though_its_host_is_on_time(
    run_dir: Path,
) -> None:
    steps, slow_ms = 40, 25.0
    result = launch(
        run_dir,
        2,
        script("gpu_ddp.py", "--steps", str(steps), "--slow-rank", "1", "--slow-ms", str(slow_ms)),
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    report = report_json(run_dir)
    serious = [f for f in report["findings"] if f["severity"] in ("warning", "critical")]
    stragglers = [f for f in serious if f["kind"] == "straggler"]
    assert [f["ranks"] for f in stragglers] == [[1]], serious
    run = read_run(run_dir)
    samples = next(iter(run.node_samples.values()))
    names = set(samples["name"])
    assert {"mrcdiag_gpu_utilization_ratio", "mrcdiag_gpu_rank_info"} <= names, names


def test_ddp_on_the_gpu_averages_gradients_as_ddp_does(run_dir: Path) -> None:
    result = launch(run_dir, 2, script("ddp_grads_match.py", "--cuda"))
    assert result.returncode == 0, result.stderr
    run = read_run(run_dir)
    assert (run.collectives["source"] == SOURCES.index("ddp")).sum() >= 2 * 3


def test_the_real_allocator_and_the_real_topology_agree_on_the_gpu_in_use() -> None:
    """DeviceMemory reads torch's caching allocator as the step records hold it, and the
    device it describes (PCI bus id as torch formats it) is one NVML's topology lists,
    which the numa_mismatch and no_p2p checks rely on to find a rank's GPU."""
    from mrcdiag.capture.device_memory import DeviceMemory
    from mrcdiag.collectors.topology import node_topology

    torch.cuda.init()
    torch.cuda.reset_peak_memory_stats()
    memory = DeviceMemory()
    block = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    allocated, reserved, peak, peak_reserved, retries, ooms, total = memory.read()
    assert allocated >= 256 << 20 and reserved >= allocated
    assert peak >= allocated and peak_reserved >= reserved
    assert (retries, ooms) == (0, 0)
    assert total == torch.cuda.get_device_properties(0).total_memory
    del block
    torch.cuda.empty_cache()
    after = memory.read()
    assert after[0] < allocated and after[1] < reserved and after[2] >= peak
    described = memory.describe_once()
    assert described is not None and described["device_name"]
    topology, why = node_topology()
    assert topology is not None, why
    assert len(topology["gpus"]) == torch.cuda.device_count()
    by_bus = {g["bus_id"].lower(): g for g in topology["gpus"]}
    assert described["pci_bus_id"].lower() in by_bus, (described, list(by_bus))
    for g in topology["gpus"]:
        assert g["name"] and g["bus_id"]
        if g["pcie_gen"] is not None and g["pcie_gen_max"] is not None:
            assert 1 <= g["pcie_gen"] <= g["pcie_gen_max"], g
        if g["pcie_width"] is not None and g["pcie_width_max"] is not None:
            assert 1 <= g["pcie_width"] <= g["pcie_width_max"], g
    expected_pairs = len(topology["gpus"]) * (len(topology["gpus"]) - 1) // 2
    assert len(topology["pairs"]) == expected_pairs


def test_topo_prints_the_real_gpus() -> None:
    from conftest import mrcdiag

    result = mrcdiag("topo")
    assert result.returncode == 0, result.stderr
    names = {torch.cuda.get_device_properties(i).name for i in range(torch.cuda.device_count())}
    assert any(name in result.stdout for name in names), result.stdout
