"""How a node's GPUs are wired, through a fake NVML that answers like nvidia-ml-py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes.fake_pynvml import FakeGpu, FakeWiring, make_fake_nvml

from mrcdiag import cli
from mrcdiag.agent.node import NodeAgent
from mrcdiag.collectors import nvml as nvml_collector
from mrcdiag.collectors.topology import node_topology, read_topology
from mrcdiag.report.topo import render_topology, what_it_means


def desk_box() -> tuple[list[FakeGpu], FakeWiring]:
    """Two RTX 4090s under a desk: no NVLink, PCIe through the CPU, P2P off."""
    gpus = [FakeGpu(name="NVIDIA GeForce RTX 4090", pcie_gen=4, pcie_gen_max=4) for _ in range(2)]
    return gpus, FakeWiring(level=30, p2p=5)


def nvlink_box(x8: int | None = None) -> tuple[list[FakeGpu], FakeWiring]:
    """Eight H100s on NVSwitches (18 links each), two sockets of 48 CPUs."""
    gpus = []
    for i in range(8):
        socket = i // 4
        gpus.append(
            FakeGpu(
                numa_node=socket,
                cpus=list(range(48 * socket, 48 * socket + 48)),
                nvlinks=dict.fromkeys(range(18), "switch"),
                pcie_width=8 if i == x8 else 16,
            )
        )
    levels = {(i, j): 40 if i // 4 == j // 4 else 50 for i in range(8) for j in range(i + 1, 8)}
    return gpus, FakeWiring(levels=levels)


def _topology(box: tuple[list[FakeGpu], FakeWiring]) -> dict:
    gpus, wiring = box
    topology, why = node_topology(make_fake_nvml(gpus, wiring=wiring))
    assert topology is not None, why
    return topology


def test_a_desk_box_without_nvlink_or_p2p_is_described_so() -> None:
    topology = _topology(desk_box())
    assert [p["path"] for p in topology["pairs"]] == ["PHB"]
    assert topology["pairs"][0]["p2p"] == "not supported"
    text = render_topology(topology, "desk")
    assert "GPU0  X     PHB*" in text and "GPU1  PHB*  X" in text
    assert "no peer-to-peer between 1 pair(s) (not supported)" in text
    assert "Gen4 x16 / Gen4 x16" in text


def test_an_nvswitch_box_has_nvlink_everywhere_and_names_the_gpu_at_x8() -> None:
    topology = _topology(nvlink_box(x8=3))
    assert {p["path"] for p in topology["pairs"]} == {"NV18"}
    assert all(p["p2p"] == "ok" for p in topology["pairs"])
    assert [g["numa_node"] for g in topology["gpus"]] == [0, 0, 0, 0, 1, 1, 1, 1]
    text = render_topology(topology, "hgx")
    assert "0-47" in text and "48-95" in text
    below = [line for line in what_it_means(topology) if "below its maximum" in line]
    assert len(below) == 1 and below[0].startswith("GPU3: PCIe link at Gen5 x8 / Gen5 x16")


def test_a_healthy_nvswitch_box_has_nothing_to_say_beyond_its_paths() -> None:
    meaning = what_it_means(_topology(nvlink_box()))
    assert meaning == ["NV18: NVLink"]


def test_gpus_joined_by_direct_links_count_their_links() -> None:
    gpus = [FakeGpu(nvlinks={0: 1, 1: 1, 2: 2}), FakeGpu(nvlinks={0: 0, 1: 0}),
            FakeGpu(nvlinks={0: 0})]  # fmt: skip
    topology = read_topology(make_fake_nvml(gpus))
    assert [(p["gpus"], p["path"]) for p in topology["pairs"]] == [
        ([0, 1], "NV2"), ([0, 2], "NV1"), ([1, 2], "PIX")
    ]  # fmt: skip


def test_topo_prints_the_matrix_and_says_so_in_one_line_without_a_gpu(monkeypatch) -> None:
    gpus, wiring = nvlink_box(x8=3)
    monkeypatch.setattr(cli, "_nvml_for_topo", lambda: make_fake_nvml(gpus, wiring=wiring))
    result = CliRunner().invoke(cli.main, ["topo"])
    assert result.exit_code == 0 and "GPU7" in result.output and "NV18" in result.output
    from fakes.fake_amdsmi import make_fake_amdsmi

    monkeypatch.setattr(cli, "_nvml_for_topo", lambda: make_fake_nvml([], library_missing=True))
    monkeypatch.setattr(cli, "_amdsmi_for_topo", lambda: make_fake_amdsmi([], init_fails=True))
    result = CliRunner().invoke(cli.main, ["topo"])
    assert result.exit_code == 0
    assert result.output.strip().splitlines() == [
        "mrcdiag: no GPU to describe on this node (NVML: NVML Shared Library Not Found; "
        "amdsmi: amdsmi error 10)"
    ]


def test_the_node_agent_stores_the_topology_once_in_the_run(tmp_path: Path) -> None:
    gpus, wiring = desk_box()
    collector = nvml_collector.create(
        {"job": "j", "node": "n"}, nvml=make_fake_nvml(gpus, wiring=wiring)
    )
    agent = NodeAgent(tmp_path / "run", None, collectors=[collector], node="n", live=False)
    agent.start()
    agent.stop()
    stored = json.loads((tmp_path / "run" / "nodes" / "n" / "topology.json").read_text())
    assert stored["pairs"][0]["path"] == "PHB" and len(stored["gpus"]) == 2


@pytest.mark.parametrize("missing", ["pcie_link", "numa", "affinity", "nvlink"])
def test_a_driver_without_a_call_leaves_its_field_empty(missing: str) -> None:
    gpus = [FakeGpu(unsupported={missing}) for _ in range(2)]
    topology = read_topology(make_fake_nvml(gpus))
    assert len(topology["gpus"]) == 2 and topology["pairs"][0]["path"] == "PIX"
    render_topology(topology, "n")  # nothing it cannot print


def _box_samples(
    links: dict[int, tuple[int, int]],
    busy: dict[int, float],
    mapped: bool = True,
    with_max: bool = True,
):
    """Node samples of a 2-GPU box over 10 s: each GPU's utilization and its PCIe link
    (generation, width) now, Gen5 x16 at most; ranks 0 and 1 on GPUs 0 and 1."""
    from handmade import node_samples

    rows = []
    for t in range(10):
        for gpu, (gen, width) in links.items():
            label = f"gpu={gpu}"
            rows += [
                (t * 10**9, "mrcdiag_gpu_utilization_ratio", label, busy[gpu]),
                (t * 10**9, "mrcdiag_gpu_pcie_link_generation", label, gen),
                (t * 10**9, "mrcdiag_gpu_pcie_link_width", label, width),
            ]
            if with_max:  # a driver that does not say leaves these out
                rows += [
                    (t * 10**9, "mrcdiag_gpu_pcie_link_generation_max", label, 5),
                    (t * 10**9, "mrcdiag_gpu_pcie_link_width_max", label, 16),
                ]
            if mapped:  # the agent's process map puts rank 1-gpu on each GPU
                rows.append((t * 10**9, "mrcdiag_gpu_rank_info", f"gpu={gpu},rank={1 - gpu}", 1))
    return node_samples(rows)


def test_a_busy_gpu_whose_link_trained_down_is_pcie_degraded_and_an_idle_one_is_not() -> None:
    from handmade import lockstep

    from mrcdiag.analyzers import analyze

    run = lockstep(2, 30)
    run.node_samples["h0"] = _box_samples({0: (5, 16), 1: (5, 8)}, busy={0: 0.9, 1: 0.9})
    (finding,) = [f for f in analyze(run).findings if f.cause == "pcie_degraded"]
    assert finding.ranks == (0,) and finding.nodes == ("h0",)  # GPU 1 drives rank 0
    assert finding.evidence["pcie_now"] == "Gen5 x8" and finding.evidence["bandwidth_share"] == 0.5
    assert finding.severity == "warning" and finding.is_anomaly
    # an idle GPU drops its link to Gen1 to save power: not a fault
    run.node_samples["h0"] = _box_samples({0: (5, 16), 1: (1, 16)}, busy={0: 0.9, 1: 0.05})
    assert [f for f in analyze(run).findings if f.cause == "pcie_degraded"] == []
    # a driver that does not give the maxima: the GPU below its peer is named all the same
    run.node_samples["h0"] = _box_samples(
        {0: (4, 16), 1: (3, 16)}, busy={0: 0.9, 1: 0.9}, with_max=False
    )
    (finding,) = [f for f in analyze(run).findings if f.cause == "pcie_degraded"]
    assert finding.ranks == (0,) and finding.evidence["pcie_peers"] == "Gen4 x16"


def test_the_nvml_collector_samples_the_link_as_trained() -> None:
    gpus = [FakeGpu(), FakeGpu(pcie_gen=3, pcie_width=8)]
    collector = nvml_collector.create({"job": "j", "node": "n"}, nvml=make_fake_nvml(gpus))
    seen = {(s.name, s.labels[0][1]): s.value for s in collector.read()}
    assert seen[("mrcdiag_gpu_pcie_link_generation", "1")] == 3
    assert seen[("mrcdiag_gpu_pcie_link_width", "1")] == 8
    assert seen[("mrcdiag_gpu_pcie_link_width_max", "1")] == 16


def test_a_rank_pinned_to_the_other_sockets_cpus_is_numa_mismatch() -> None:
    from handmade import lockstep

    from mrcdiag.analyzers import analyze

    run = lockstep(3, 30)
    run.topology["h0"] = _topology(nvlink_box())  # GPUs 0-3 near CPUs 0-47, 4-7 near 48-95
    bus = {g["index"]: g["bus_id"] for g in run.topology["h0"]["gpus"]}
    run.ranks[0].device = {"pci_bus_id": bus[0], "cpus": list(range(48, 96))}  # wrong socket
    run.ranks[1].device = {"pci_bus_id": bus[4], "cpus": list(range(48, 96))}  # right one
    run.ranks[2].device = {"pci_bus_id": bus[1], "cpus": list(range(96))}  # not pinned
    (finding,) = [f for f in analyze(run).findings if f.cause == "numa_mismatch"]
    assert finding.ranks == (0,) and finding.evidence["gpu_numa_node"] == 0
    assert finding.evidence["rank_cpus"] == "48-95" and finding.evidence["gpu_cpus"] == "0-47"
    assert finding.severity == "warning" and finding.is_anomaly


def test_collectives_between_gpus_without_p2p_are_told_as_the_boxs_shape() -> None:
    from handmade import lockstep

    from mrcdiag.analyzers import analyze

    run = lockstep(2, 30)
    run.topology["h0"] = _topology(desk_box())  # two 4090s, P2P off through the host bridge
    (finding,) = [f for f in analyze(run).findings if f.cause == "no_p2p"]
    assert finding.ranks == (0, 1) and finding.severity == "info" and not finding.is_anomaly
    assert finding.evidence["pairs_without_p2p"] == "GPU0-GPU1: not supported"
    assert finding.evidence["path"] == "PHB" and finding.evidence["direct_pcie_gbps"] == 31.5
    assert finding.time_lost_s > 0
    run.topology["h0"] = _topology(nvlink_box())  # every pair has P2P: nothing to say
    assert [f for f in analyze(run).findings if f.cause == "no_p2p"] == []


@pytest.mark.parametrize("x8", [3, None])
def test_a_fake_nvlink_box_under_a_run_names_the_gpu_at_x8_and_a_healthy_one_nothing(
    tmp_path: Path, x8: int | None
) -> None:
    """End to end: the node agent samples a fake 8-GPU box (busy) beside a run of 8 ranks
    on that node and stores its topology; the report names what is wrong, and nothing on
    the healthy box."""
    from conftest import report_json

    from mrcdiag.store.synthetic import SyntheticSpec, write_synthetic_run

    run_dir = write_synthetic_run(tmp_path / "run", SyntheticSpec(ranks=8, steps=60))
    gpus, wiring = nvlink_box(x8=x8)
    collector = nvml_collector.create({"job": "j", "node": "node-0000"},
                                      nvml=make_fake_nvml(gpus, wiring=wiring))  # fmt: skip
    agent = NodeAgent(run_dir, None, collectors=[collector], node="node-0000", live=False)
    agent.start()
    for _ in range(5):
        agent.sample_once()
    agent.stop()
    box = {"pcie_degraded", "numa_mismatch", "no_p2p"}
    found = [
        (f["cause"], f["ranks"]) for f in report_json(run_dir)["findings"] if f["cause"] in box
    ]
    assert found == ([("pcie_degraded", [3])] if x8 is not None else []), found


def test_an_mi300x_box_is_described_from_amdsmi_and_its_link_at_x8_named(
    monkeypatch, tmp_path: Path
) -> None:
    from fakes.fake_amdsmi import make_fake_amdsmi, mi300

    from mrcdiag.collectors import amd as amd_collector
    from mrcdiag.collectors.topology import amd_node_topology

    gpus = [mi300() for _ in range(8)]
    gpus[5]["pcie_info"] = {
        "pcie_static": {"max_pcie_width": 16, "max_pcie_speed": 32},
        "pcie_metric": {"pcie_width": 8, "pcie_speed": 16000},
    }
    gpus[0]["no_p2p"] = {7}
    topology, why = amd_node_topology(make_fake_amdsmi(gpus))
    assert topology is not None, why
    assert {p["path"] for p in topology["pairs"]} == {"XGMI"}
    assert topology["gpus"][5]["pcie_gen"] == 4 and topology["gpus"][5]["pcie_gen_max"] == 5
    assert [p["gpus"] for p in topology["pairs"] if p["p2p"] != "ok"] == [[0, 7]]
    below = [line for line in what_it_means(topology) if "below its maximum" in line]
    assert len(below) == 1 and below[0].startswith("GPU5: PCIe link at Gen4 x8 / Gen5 x16")
    # `mrcdiag topo` on a node whose NVML has no GPU reads amdsmi
    monkeypatch.setattr(cli, "_nvml_for_topo", lambda: make_fake_nvml([], library_missing=True))
    monkeypatch.setattr(cli, "_amdsmi_for_topo", lambda: make_fake_amdsmi(gpus))
    result = CliRunner().invoke(cli.main, ["topo"])
    assert (
        result.exit_code == 0 and "XGMI" in result.output and "AMD Instinct MI300X" in result.output
    )
    # and the node agent stores it from its AMD collector
    collector = amd_collector.create({"job": "j", "node": "n"}, amdsmi=make_fake_amdsmi(gpus))
    agent = NodeAgent(tmp_path / "run", None, collectors=[collector], node="n", live=False)
    agent.start()
    agent.stop()
    stored = json.loads((tmp_path / "run" / "nodes" / "n" / "topology.json").read_text())
    assert len(stored["gpus"]) == 8 and stored["pairs"][0]["path"] == "XGMI"


def test_the_live_analysis_gets_another_nodes_topology_from_its_agent(tmp_path: Path) -> None:
    from mrcdiag.agent.sources import AgentPull, JobRecords

    gpus, wiring = desk_box()
    collector = nvml_collector.create(
        {"job": "j", "node": "b"}, nvml=make_fake_nvml(gpus, wiring=wiring)
    )
    agent = NodeAgent(tmp_path / "b", 0, addr="127.0.0.1", collectors=[collector], node="b",
                      live=False)  # fmt: skip
    agent.start()
    try:
        records = JobRecords(tmp_path / "a", "a")  # node a's disk holds none of b's files
        records.remote["b"] = AgentPull(agent.base_url or "")
        seen = records.topology()
        assert list(seen) == ["b"] and seen["b"]["pairs"][0]["path"] == "PHB"
    finally:
        agent.stop()
