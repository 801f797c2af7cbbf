"""Dashboards: well-formed, as committed, and every panel's PromQL answers from a real
Prometheus that scrapes a real `mrcdiag launch` job (GPU and fabric panels from an agent
whose NVML and sysfs are the test fakes)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, job_env, launch_command, script, torchrun
from fakes.fake_pynvml import FakeGpu, make_fake_nvml
from prom import Prometheus, free_port
from test_infiniband import write_port

from mrcdiag.agent.node import NodeAgent
from mrcdiag.collectors import infiniband, nvml
from mrcdiag.grafana.dashboards import all_dashboards, panel_specs

COMMITTED = REPO / "dashboards"


def test_committed_dashboards_are_the_generated_ones() -> None:
    for name, dashboard in all_dashboards().items():
        assert json.loads((COMMITTED / name).read_text()) == dashboard, (
            f"{name} is stale: run `mrcdiag dashboards export dashboards`"
        )


@pytest.mark.parametrize("name", sorted(all_dashboards()))
def test_dashboard_is_well_formed(name: str) -> None:
    dashboard = json.loads((COMMITTED / name).read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {"job", "node"} <= set(variables)
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])


def _concrete(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", "10s")
        .replace('"$job"', '"promtest"')
        .replace('"$node"', '".*"')
        .replace('"$rank"', '".*"')
    )


@pytest.mark.slow
def test_every_panel_query_returns_data_from_a_real_run(tmp_path: Path) -> None:
    rules = (REPO / "deploy/prometheus/rules/mrcdiag.rules.yml").read_text()
    fast_rules = tmp_path / "rules.yml"
    fast_rules.write_text(rules.replace("interval: 15s", "interval: 1s"))
    job_port, gpu_port = free_port(), free_port()
    tree = tmp_path / "sysfs"
    write_port(
        tree,
        "mlx5_0",
        1,
        {
            "port_xmit_data": 10,
            "port_rcv_data": 10,
            "port_xmit_wait": 0,
            "symbol_error": 0,
            "link_downed": 0,
        },
        hw={"np_ecn_marked_roce_packets": 0, "roce_adp_retrans": 0},
    )
    gpus = [FakeGpu() for _ in range(8)]
    gpus[2].clock_reasons = 0x20
    common = {"job": "promtest", "node": "gpunode"}
    gpu_agent = NodeAgent(
        None,
        gpu_port,
        job="promtest",
        addr="127.0.0.1",
        node="gpunode",
        collectors=[
            nvml.create(common, nvml=make_fake_nvml(gpus)),
            infiniband.create(common, sysfs_root=tree),
        ],
    )
    gpu_agent.start()
    prom = Prometheus(
        tmp_path, [f"127.0.0.1:{job_port}", f"127.0.0.1:{gpu_port}"], rule_files=[fast_rules]
    )
    job = subprocess.Popen(
        launch_command(
            tmp_path / "run",
            # a rank slower by half its work, whose (fake) GPU allocator retries every step:
            # the findings panels have a finding to show, the memory panels their series
            torchrun(
                2,
                script("allocator_retries.py", "--steps", "3000", "--work-ms", "5")
                + ["--retry-rank", "1", "--every", "1", "--stall-ms", "10"],
            ),
            port=job_port,
            extra=["--job", "promtest", "--interval", "0.5"],
        ),
        env=job_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        prom.wait_until(
            lambda: len(prom.query("mrcdiag:rank_lateness:ratio")) >= 2,
            120,
            "the recording rules over the job's series",
        )
        prom.wait_until(
            lambda: bool(prom.query("rate(mrcdiag_gpu_ecc_errors_total[10s])")),
            30,
            "two scrapes of the GPU agent",
        )
        prom.wait_until(
            lambda: bool(prom.query("rate(mrcdiag_finding_time_lost_seconds_total[10s]) > 0")),
            60,
            "the live analysis's straggler, over two scrapes",
        )
        empty = []
        for name, dashboard in all_dashboards().items():
            for annotation in dashboard["annotations"]["list"]:
                if not prom.query(_concrete(annotation["expr"])):
                    empty.append(f"{name}: annotation {annotation['name']}")
        for name, panels in panel_specs().items():
            for panel in panels:
                for expr, _ in panel.exprs:
                    if not prom.query(_concrete(expr)):
                        empty.append(f"{name}: {panel.title}: {_concrete(expr)}")
        assert empty == []
    finally:
        job.terminate()
        job.wait(timeout=60)
        prom.stop()
        gpu_agent.stop()


def test_variable_queries_use_existing_metrics() -> None:
    names = set()
    for dashboard in all_dashboards().values():
        for var in dashboard["templating"]["list"]:
            if var["type"] == "query":
                names |= set(re.findall(r"label_values\((\w+)", var["definition"]))
    assert names == {"mrcdiag_agent_up", "mrcdiag_steps_total"}
