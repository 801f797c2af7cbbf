"""Several hosts on one machine (network namespaces): clean runs, slow nodes, slow links."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import demo_job, job_env, report_json
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
    assert _serious(report) == []
    assert set(run.node_samples) == {"host0", "host1", "host2"}


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
    assert "pairwise probe" in links[0]["evidence"]["located_by"]
    assert not [
        f
        for f in serious
        if f["kind"] == "straggler" and f["cause"] != "slow_node" and f["nodes"] == ["host1"]
    ]


def test_every_rank_of_one_host_burning_cpu_is_one_slow_node(tmp_path: Path) -> None:
    with Hosts(2, tmp_path) as hosts:
        run_dirs = launch_on_hosts(
            hosts,
            2,
            demo_job("--steps", "60", "--work-ms", "5", "--slow-host-rank", "2", "--slow-ms", "20"),
            job_env(),
            timeout=180,
        )
    serious = _serious(report_json(*run_dirs))
    stragglers = [f for f in serious if f["kind"] == "straggler"]
    assert [(f["cause"], f["nodes"], f["ranks"]) for f in stragglers] == [
        ("slow_node", ["host1"], [2, 3])
    ], serious
    meta = json.loads((run_dirs[1] / "ranks" / "rank-00002" / "rank.json").read_text())
    assert meta["host"] == "host1"
