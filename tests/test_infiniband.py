"""The fabric collector on sysfs trees laid out as the kernel lays them out."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrcdiag.collectors.infiniband import FabricCollector, create


def write_port(
    root: Path,
    device: str,
    port: int,
    counters: dict[str, int],
    hw: dict[str, int] | None = None,
    state: str = "4: ACTIVE",
    link_layer: str = "InfiniBand",
    rate: str = "400 Gb/sec (4X NDR)",
) -> Path:
    p = root / device / "ports" / str(port)
    (p / "counters").mkdir(parents=True, exist_ok=True)
    (p / "state").write_text(state + "\n")
    (p / "phys_state").write_text("5: LinkUp\n" if "ACTIVE" in state else "3: Disabled\n")
    (p / "rate").write_text(rate + "\n")
    (p / "link_layer").write_text(link_layer + "\n")
    for name, value in counters.items():
        (p / "counters" / name).write_text(f"{value}\n")
    if hw is not None:
        (p / "hw_counters").mkdir(exist_ok=True)
        for name, value in hw.items():
            (p / "hw_counters" / name).write_text(f"{value}\n")
    return p


def by_name(samples, name: str) -> dict:
    return {s.labels: s.value for s in samples if s.name == name}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write_port(
        tmp_path,
        "mlx5_0",
        1,
        {
            "port_xmit_data": 1000,
            "port_rcv_data": 2000,
            "port_xmit_wait": 5,
            "symbol_error": 0,
            "link_downed": 0,
        },
    )
    write_port(
        tmp_path,
        "mlx5_1",
        1,
        {"port_xmit_data": 10, "port_rcv_data": 10, "link_downed": 1},
        hw={
            "np_ecn_marked_roce_packets": 7,
            "rp_cnp_handled": 3,
            "out_of_sequence": 0,
            "roce_adp_retrans": 2,
            "local_ack_timeout_err": 0,
        },
        link_layer="Ethernet",
    )
    return tmp_path


def test_infiniband_and_roce_ports_with_units(tree: Path) -> None:
    samples = FabricCollector({}, tree).read()
    tx = by_name(samples, "mrcdiag_fabric_port_transmit_bytes_total")
    assert tx[(("device", "mlx5_0"), ("port", "1"))] == 4000  # 4-byte words
    assert (
        by_name(samples, "mrcdiag_fabric_port_transmit_wait_total")[
            (("device", "mlx5_0"), ("port", "1"))
        ]
        == 5
    )
    hw = by_name(samples, "mrcdiag_fabric_hw_counter_total")
    assert hw[(("device", "mlx5_1"), ("port", "1"), ("counter", "np_ecn_marked_roce_packets"))] == 7
    assert hw[(("device", "mlx5_1"), ("port", "1"), ("counter", "roce_adp_retrans"))] == 2
    up = by_name(samples, "mrcdiag_fabric_port_up")
    assert up[(("device", "mlx5_1"), ("port", "1"), ("link_layer", "Ethernet"))] == 1.0
    assert (
        by_name(samples, "mrcdiag_fabric_port_rate_bytes_per_second")[
            (("device", "mlx5_0"), ("port", "1"))
        ]
        == 50e9
    )


def test_32_bit_counter_wrap_keeps_the_total_growing(tree: Path) -> None:
    c = FabricCollector({}, tree)
    path = tree / "mlx5_0" / "ports" / "1" / "counters" / "port_xmit_data"
    path.write_text(f"{(1 << 32) - 10}\n")
    c.read()
    path.write_text("20\n")  # wrapped: 30 words later
    tx = by_name(c.read(), "mrcdiag_fabric_port_transmit_bytes_total")
    assert tx[(("device", "mlx5_0"), ("port", "1"))] == ((1 << 32) - 10 + 30) * 4


def test_device_that_disappears_is_dropped_and_comes_back_clean(tree: Path) -> None:
    import shutil

    c = FabricCollector({}, tree)
    c.read()
    shutil.rmtree(tree / "mlx5_1")
    samples = c.read()
    assert all(dict(s.labels).get("device") != "mlx5_1" for s in samples)
    write_port(tree, "mlx5_1", 1, {"port_xmit_data": 3})
    tx = by_name(c.read(), "mrcdiag_fabric_port_transmit_bytes_total")
    assert tx[(("device", "mlx5_1"), ("port", "1"))] == 12


def test_port_down_and_link_flap_counted(tree: Path) -> None:
    c = FabricCollector({}, tree)
    c.read()
    write_port(tree, "mlx5_0", 1, {"link_downed": 2}, state="1: DOWN")
    samples = c.read()
    assert (
        by_name(samples, "mrcdiag_fabric_port_up")[
            (("device", "mlx5_0"), ("port", "1"), ("link_layer", "InfiniBand"))
        ]
        == 0.0
    )
    assert (
        by_name(samples, "mrcdiag_fabric_port_link_downed_total")[
            (("device", "mlx5_0"), ("port", "1"))
        ]
        == 2
    )


def test_no_rdma_devices_means_no_collector(tmp_path: Path) -> None:
    assert create({}, sysfs_root=tmp_path / "missing") is None
