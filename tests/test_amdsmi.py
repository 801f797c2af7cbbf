"""The amdsmi collector through a fake at the amdsmi module boundary."""

from __future__ import annotations

from fakes.fake_amdsmi import make_fake_amdsmi, mi300

from mrcdiag.collectors import amd


def by_name(samples, name: str) -> dict:
    return {s.labels: s.value for s in samples if s.name == name}


def test_eight_gpus_with_the_nvml_metric_names() -> None:
    gpus = [mi300() for _ in range(8)]
    gpus[4] = mi300(unsupported={"power_info"})
    gpus[7]["metrics_info"] = {**gpus[7]["metrics_info"], "throttle_status": 1}
    c = amd.create({"job": "j"}, amdsmi=make_fake_amdsmi(gpus))
    samples = c.read()
    assert by_name(samples, "mrcdiag_gpu_utilization_ratio")[(("gpu", "0"),)] == 0.85
    assert by_name(samples, "mrcdiag_gpu_memory_total_bytes")[(("gpu", "1"),)] == 196608 << 20
    power = by_name(samples, "mrcdiag_gpu_power_watts")
    assert power[(("gpu", "0"),)] == 600 and (("gpu", "4"),) not in power
    assert by_name(samples, "mrcdiag_gpu_xgmi_receive_bytes_total")[(("gpu", "2"),)] == 30 * 1024
    events = by_name(samples, "mrcdiag_gpu_clock_event_active")
    assert events[(("gpu", "7"), ("reason", "amd_throttle"))] == 1.0
    assert c.read()  # NOT_SUPPORTED is remembered, nothing breaks on the next read


def test_no_library_and_failing_init_give_no_collector() -> None:
    assert amd.create({}, amdsmi=make_fake_amdsmi([mi300()], init_fails=True)) is None
    assert amd.create({}, amdsmi=make_fake_amdsmi([])) is None
