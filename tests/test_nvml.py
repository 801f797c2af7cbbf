"""The NVML collector through a fake at the pynvml boundary: 8 GPUs, errors included."""

from __future__ import annotations

import pytest
from fakes.fake_pynvml import FakeGpu, make_fake_nvml
from prometheus_client import CollectorRegistry, generate_latest

from mrcdiag.collectors import nvml as nvml_collector

COMMON = {"job": "j", "node": "n"}


def values(samples, name: str) -> dict:
    return {s.labels: s.value for s in samples if s.name == name}


def eight_gpus() -> list[FakeGpu]:
    gpus = [FakeGpu(pids=[1000 + i]) for i in range(8)]
    gpus[2].clock_reasons = 0x20 | 0x4  # sw thermal + power cap
    gpus[2].sm_clock_mhz = 1200
    gpus[3].unsupported = {"power", "power_limit"}
    gpus[6].gpm = False  # an older GPU: fall back to utilization.memory and counters
    return gpus


def test_reads_every_metric_of_eight_gpus() -> None:
    fake = make_fake_nvml(eight_gpus())
    ranks = lambda: [(i, i, 1000 + i) for i in range(8)]  # noqa: E731
    c = nvml_collector.create(COMMON, ranks, nvml=fake)
    assert c is not None and c.count == 8
    c.read()  # GPM rates need two samples
    samples = c.read()
    assert values(samples, "mrcdiag_gpu_up") and all(
        v == 1.0 for v in values(samples, "mrcdiag_gpu_up").values()
    )
    util = values(samples, "mrcdiag_gpu_utilization_ratio")
    assert util[(("gpu", "0"),)] == 0.9
    bw = values(samples, "mrcdiag_gpu_memory_bandwidth_utilization_ratio")
    assert bw[(("gpu", "0"),)] == 0.55  # GPM DRAM_BW_UTIL
    assert bw[(("gpu", "6"),)] == 0.40  # fallback: utilization.memory
    assert values(samples, "mrcdiag_gpu_tensor_activity_ratio")[(("gpu", "1"),)] == pytest.approx(
        0.7
    )
    clocks = values(samples, "mrcdiag_gpu_sm_clock_hertz")
    assert clocks[(("gpu", "2"),)] == 1.2e9
    events = values(samples, "mrcdiag_gpu_clock_event_active")
    assert events[(("gpu", "2"), ("reason", "sw_thermal"))] == 1.0
    assert events[(("gpu", "2"), ("reason", "sw_power_cap"))] == 1.0
    assert events[(("gpu", "1"), ("reason", "sw_thermal"))] == 0.0
    power = values(samples, "mrcdiag_gpu_power_watts")
    assert power[(("gpu", "0"),)] == 650.0 and (("gpu", "3"),) not in power  # NotSupported
    assert values(samples, "mrcdiag_gpu_temperature_celsius")[(("gpu", "3"),)] == 60
    nvlink = values(samples, "mrcdiag_gpu_nvlink_transmit_bytes_per_second")
    assert nvlink[(("gpu", "0"),)] == 4 * 1000 * (1 << 20)
    counters = values(samples, "mrcdiag_gpu_nvlink_transmit_bytes_total")
    assert counters[(("gpu", "6"),)] == 5_000_000 * 1024
    pcie = values(samples, "mrcdiag_gpu_pcie_transmit_bytes_per_second")
    assert pcie[(("gpu", "0"),)] == 100 * (1 << 20) and pcie[(("gpu", "6"),)] == 1000 * 1024
    info = values(samples, "mrcdiag_gpu_rank_info")
    assert (("gpu", "4"), ("rank", "4"), ("local_rank", "4"), ("pid", "1004")) in info


def test_lost_gpu_is_reported_down_and_the_others_go_on() -> None:
    gpus = eight_gpus()
    c = nvml_collector.create(COMMON, nvml=make_fake_nvml(gpus))
    c.read()
    gpus[5].lost = True
    samples = c.read()
    up = {dict(k)["gpu"]: v for k, v in values(samples, "mrcdiag_gpu_up").items()}
    assert up["5"] == 0.0 and up["4"] == 1.0
    assert (("gpu", "5"),) not in values(samples, "mrcdiag_gpu_utilization_ratio")
    assert (("gpu", "7"),) in values(samples, "mrcdiag_gpu_utilization_ratio")
    gpus[5].lost = False  # a lost GPU stays down until the agent restarts
    assert {dict(k)["gpu"]: v for k, v in values(c.read(), "mrcdiag_gpu_up").items()}["5"] == 0


def test_xid_errors_are_counted_per_gpu_and_code() -> None:
    fake = make_fake_nvml(eight_gpus())
    c = nvml_collector.create(COMMON, nvml=fake)
    fake.fake_events.extend([(1, 79), (1, 79), (7, 48)])
    xids = values(c.read(), "mrcdiag_gpu_xid_errors_total")
    assert xids[(("gpu", "1"), ("xid", "79"))] == 2 and xids[(("gpu", "7"), ("xid", "48"))] == 1


def test_missing_library_is_one_line_and_no_collector(capsys) -> None:
    from mrcdiag import log

    log._said.discard("no-nvml")
    assert nvml_collector.create(COMMON, nvml=make_fake_nvml([], library_missing=True)) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no NVIDIA GPU metrics" in err[0]


def test_exposition_has_job_and_node_labels() -> None:
    registry = CollectorRegistry()
    registry.register(nvml_collector.create(COMMON, nvml=make_fake_nvml(eight_gpus())))
    text = generate_latest(registry).decode()
    assert 'mrcdiag_gpu_utilization_ratio{gpu="0",job="j",node="n"} 0.9' in text
    assert "# TYPE mrcdiag_gpu_ecc_errors_total counter" in text
