"""Several hosts on one machine (network namespaces): clean runs, slow nodes, slow links."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    demo_job,
    job_env,
    live_warnings_of_a_clean_run,
    mrcdiag,
    report_json,
    warnings_of_a_clean_run,
)
from netns import Hosts, launch_on_hosts

from mrcdiag.store.reader import read_run

pytestmark = pytest.mark.slow


def _serious(report: dict) -> list[dict]:
    return [f for f in report["findings"] if f["severity"] in ("warning", "critical")]


def test_clean_run_on_three_hosts_merges_and_has_no_warning(tmp_path: Path) -> None:
    with Hosts(3, tmp_path) as hosts:
        run_dirs = launch_on_hosts(
            hosts, 1, demo_job("--steps", "120", "--work-ms", "8"), job_env()
        )
    run = read_run(run_dirs)
    assert sorted(run.hosts) == ["host0", "host1", "host2"]
    assert run.world_size == 3 and not run.problems
    clock = {r: i.clock_method for r, i in run.ranks.items()}
    assert clock[0] == "reference" and {clock[1], clock[2]} == {"shared_clock"}
    assert all(
        i.clock_uncertainty_ns and i.clock_uncertainty_ns < 5_000_000
        for r, i in run.ranks.items()
        if r
    )
    assert len(run.link_probe) == 3  # every pair of hosts
    report = report_json(*run_dirs)
    assert warnings_of_a_clean_run(report) == []
    assert live_warnings_of_a_clean_run(run_dirs[0]) == []
    assert _emit_exclude(run_dirs) == ""
    assert set(run.node_samples) == {"host0", "host1", "host2"}
    for host, samples in run.node_samples.items():  # each host's own NIC, in the run data
        sent = samples["value"][
            (samples["name"] == "mrcdiag_host_network_transmit_bytes_total")
            & (samples["labels"] == "nic=eth0")
        ]
        assert len(sent) >= 2 and sent[-1] > sent[0], host


def _emit_exclude(run_dirs: list[Path]) -> str:
    result = mrcdiag("report", *map(str, run_dirs), "--emit", "exclude")
    assert result.returncode == 0, result.stderr
    return result.stdout


def _live(run_dirs: list[Path]) -> list[dict]:
    """What the live analysis found (it runs beside global rank 0, on host0, and reads
    the other hosts' ranks from their agents: no host sees another's disk)."""
    assert not (run_dirs[1] / "findings.jsonl").exists()
    path = run_dirs[0] / "findings.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return [x["finding"] for x in lines if x["event"] == "start"]


def test_slow_link_of_one_host_is_found_and_is_not_a_compute_straggler(tmp_path: Path) -> None:
    with Hosts(3, tmp_path) as hosts:
        hosts.shape(1, "40mbit")
        run_dirs = launch_on_hosts(
            hosts, 1, demo_job("--steps", "30", "--work-ms", "5"), job_env(), timeout=180
        )
    report = report_json(*run_dirs)
    serious = _serious(report)
    links = [f for f in serious if f["kind"] == "interconnect" and f["cause"] == "slow_link"]
    assert [f["nodes"] for f in links] == [["host1"]], serious
    live = [(f["kind"], f["cause"], f["nodes"]) for f in _live(run_dirs)]
    assert ("interconnect", "slow_link", ["host1"]) in live, live
    assert "pairwise probe" in links[0]["evidence"]["located_by"]
    assert not [
        f
        for f in serious
        if f["kind"] == "straggler" and f["cause"] != "slow_node" and f["nodes"] == ["host1"]
    ]


def test_every_rank_of_one_host_burning_cpu_is_one_slow_node(tmp_path: Path) -> None:
    with Hosts(3, tmp_path) as hosts:
        run_dirs = launch_on_hosts(
            hosts,
            2,
            demo_job(
                "--steps", "120", "--work-ms", "5", "--slow-host-rank", "2", "--slow-ms", "40"
            ),
            job_env(),
            timeout=240,
        )
    serious = _serious(report_json(*run_dirs))
    stragglers = [f for f in serious if f["kind"] == "straggler"]
    assert [(f["cause"], f["nodes"], f["ranks"]) for f in stragglers] == [
        ("slow_node", ["host1"], [2, 3])
    ], serious
    live = [(f["kind"], f["cause"], f["nodes"]) for f in _live(run_dirs)]
    assert ("straggler", "slow_node", ["host1"]) in live, live
    # a critical slow node is one to take out of the next run, in each scheduler's form
    assert stragglers[0]["severity"] == "critical", stragglers[0]
    emitted = _emit_exclude(run_dirs)
    assert "--exclude=host1" in emitted
    assert "kubectl cordon host1 && kubectl taint nodes host1 " in emitted
    assert [line for line in emitted.splitlines() if not line.startswith(("#", "-", "k"))] == [
        "host1"
    ]
    meta = json.loads((run_dirs[1] / "ranks" / "rank-00002" / "rank.json").read_text())
    assert meta["host"] == "host1"


def _serious_findings_with_nics(
    tmp_path: Path,
    trees: list[Path],
    steps: int,
    while_running: Callable[[Hosts, list[Path]], None],
) -> list[dict]:
    """A demo job on one host per fake NIC tree (MRCDIAG_SYSFS_INFINIBAND), agents sampling
    every 0.25 s, `while_running(hosts, run_dirs)` during it; its serious findings."""
    with Hosts(len(trees), tmp_path) as hosts:
        run_dirs = launch_on_hosts(
            hosts,
            1,
            demo_job("--steps", str(steps), "--work-ms", "8"),
            job_env(),
            extra_launch=["--interval", "0.25"],
            timeout=180,
            while_running=lambda dirs: while_running(hosts, dirs),
            host_env={i: {"MRCDIAG_SYSFS_INFINIBAND": str(t)} for i, t in enumerate(trees)},
        )
    return _serious(report_json(*run_dirs))


def _wait_for_steps(run_dir: Path, rank: int, steps: int, timeout: float = 60) -> None:
    import time

    from mrcdiag.store.tail import StreamTail

    tail = StreamTail(run_dir / "ranks" / f"rank-{rank:05d}" / "steps.arrows")
    seen, deadline = 0, time.monotonic() + timeout
    while seen < steps:
        assert time.monotonic() < deadline, f"rank {rank} made only {seen} steps"
        seen += sum(b.num_rows for b in tail.read_new())
        time.sleep(0.05)  # polling a file another process appends to


def test_retransmissions_during_a_slow_stretch_are_packet_loss_on_that_host(
    tmp_path: Path,
) -> None:
    import time

    from test_infiniband import write_port

    trees = [tmp_path / f"sysfs{i}" for i in range(2)]
    for tree in trees:
        write_port(
            tree,
            "mlx5_0",
            1,
            {"port_xmit_data": 0, "link_downed": 0},
            hw={"roce_adp_retrans": 0, "out_of_sequence": 0, "np_cnp_sent": 0},
            link_layer="Ethernet",
        )
    hw = trees[1] / "mlx5_0" / "ports" / "1" / "hw_counters"

    def degrade_host1(hosts: Hosts, run_dirs: list[Path]) -> None:
        _wait_for_steps(run_dirs[0], 0, 60)
        hosts.shape(1, "20mbit")
        for i in range(1, 31):  # the NIC retransmits while the link is bad
            (hw / "roce_adp_retrans").write_text(f"{i * 40}\n")
            (hw / "out_of_sequence").write_text(f"{i * 7}\n")
            time.sleep(0.1)  # the fault lasts about three seconds of wall time
        hosts.unshape(1)

    serious = _serious_findings_with_nics(tmp_path, trees, 260, degrade_host1)
    loss = [f for f in serious if f["cause"] == "packet_loss"]
    assert [f["nodes"] for f in loss] == [["host1"]], serious
    counters = loss[0]["evidence"]["counter_increase"]
    assert any("roce_adp_retrans" in k and v == 1200 for k, v in counters.items())
    assert not [f for f in serious if f["nodes"] == ["host0"] and f["kind"] == "interconnect"]


def test_port_that_trained_down_on_one_host_is_a_degraded_link(tmp_path: Path) -> None:
    from test_infiniband import write_port

    trees = [tmp_path / f"sysfs{i}" for i in range(2)]
    rates = ["400 Gb/sec (4X NDR)", "200 Gb/sec (4X HDR)"]  # host1's link trained down
    for tree, rate in zip(trees, rates, strict=True):
        write_port(tree, "mlx5_0", 1, {"port_xmit_data": 0}, rate=rate)

    def job_traffic_through_the_ports(_hosts: Hosts, run_dirs: list[Path]) -> None:
        _wait_for_steps(run_dirs[0], 0, 20)
        for tree in trees:  # the job's bytes, as the NIC counts them (4-byte words)
            (tree / "mlx5_0" / "ports" / "1" / "counters" / "port_xmit_data").write_text(
                f"{256 << 20}\n"
            )

    serious = _serious_findings_with_nics(tmp_path, trees, 200, job_traffic_through_the_ports)
    degraded = [f for f in serious if f["cause"] == "link_degraded"]
    assert [(f["nodes"], f["ranks"]) for f in degraded] == [(["host1"], [1])], serious
    assert degraded[0]["evidence"]["rate_gbit_s"] == 200.0
    assert degraded[0]["evidence"]["usual_gbit_s"] == 400.0
    # live too: host1's samples reach the analysis on host0 through host1's agent
    live = [(f["cause"], f["nodes"]) for f in _live(sorted(tmp_path.glob("host*/run")))]
    assert ("link_degraded", ["host1"]) in live, live
