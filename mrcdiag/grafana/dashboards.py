"""The Grafana dashboards, built from code so that ids, units and variables stay consistent.

`dashboards/*.json` in the repository are these, exported; a test checks they match.
Every panel's PromQL uses the `$job`, `$node` and `$rank` variables and
`$__rate_interval`; expensive per-rank aggregations come from the recording rules in
deploy/prometheus/rules/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrcdiag.metrics import THROTTLE_REASONS

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job"'
NODE_SEL = 'job=~"$job",node=~"$node"'
RANK_SEL = 'job=~"$job",node=~"$node",rank=~"$rank"'
THROTTLE = "|".join(THROTTLE_REASONS)
RI = "$__rate_interval"


@dataclass
class Panel:
    title: str
    exprs: list[tuple[str, str]]  # (PromQL, legend)
    unit: str
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    gpu_only: bool = False  # returns data only where GPUs (NVML/amdsmi) are sampled
    fabric_only: bool = False  # only where InfiniBand/RoCE devices are sampled
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)


def _variables(with_rank: bool) -> list[dict[str, Any]]:
    def query(name: str, expr: str, label: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "query": {"query": expr, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "definition": expr,
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"text": "All", "value": "$__all"},
            "sort": 1,
        }

    out = [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
        },
        query("job", "label_values(mrcdiag_agent_up, job)", "Job"),
        query("node", 'label_values(mrcdiag_agent_up{job=~"$job"}, node)', "Node"),
    ]
    if with_rank:
        out.append(query("rank", 'label_values(mrcdiag_steps_total{job=~"$job"}, rank)', "Rank"))
    return out


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                "range": True,
                **(
                    {"format": "table", "instant": True, "range": False}
                    if panel.kind == "table"
                    else {}
                ),
            }
            for i, (expr, legend) in enumerate(panel.exprs)
        ],
        "options": panel.options,
    }
    if panel.kind == "heatmap":
        out["options"] = {
            "calculate": False,
            "yAxis": {"unit": "short"},
            "color": {"scheme": "Oranges", "mode": "scheme"},
            "cellValues": {"unit": panel.unit},
            **panel.options,
        }
    return out


# Annotations of the job dashboard: each live finding, from its start to its end
FINDING_ANNOTATION = {
    "name": "Findings",
    "datasource": DATASOURCE,
    "enable": True,
    "iconColor": "red",
    "expr": f"max by (kind, cause, severity, rank, node) (mrcdiag_finding_active{{{SEL}}}) == 1",
    "step": "15s",
    "titleFormat": "{{severity}} {{kind}}: {{cause}}",
    "textFormat": "rank {{rank}} node {{node}}",
    "useValueForTime": False,
}


def _dashboard(
    uid: str,
    title: str,
    panels: list[Panel],
    with_rank: bool,
    tags: list[str],
    annotations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    laid_out = []
    x = y = row_height = 0
    for panel_id, panel in enumerate(panels, 1):
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        laid_out.append(_panel_json(panel, panel_id, x, y))
        x += panel.width
        row_height = max(row_height, panel.height)
    return {
        "uid": uid,
        "title": title,
        "tags": ["mrcdiag", *tags],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": _variables(with_rank)},
        "annotations": {"list": list(annotations or [])},
        "panels": laid_out,
    }


def cluster_panels() -> list[Panel]:
    return [
        Panel(
            "Jobs recording",
            [("count(count by (job) (mrcdiag_steps_total))", "jobs")],
            "short",
            "stat",
            6,
            4,
        ),
        Panel("Nodes with an agent", [("sum(mrcdiag_agent_up)", "nodes")], "short", "stat", 6, 4),
        Panel(
            "GPUs busy (utilization > 50%)",
            [("count(mrcdiag_gpu_utilization_ratio > 0.5) or vector(0)", "busy")],
            "short",
            "stat",
            6,
            4,
            gpu_only=True,
        ),
        Panel(
            "GPUs idle (utilization < 10%)",
            [("count(mrcdiag_gpu_utilization_ratio < 0.1) or vector(0)", "idle")],
            "short",
            "stat",
            6,
            4,
            gpu_only=True,
        ),
        Panel(
            "Steps per second by job",
            [(f"sum by (job) (rate(mrcdiag_steps_total[{RI}]))", "{{job}}")],
            "short",
        ),
        Panel(
            "Median step time by job", [("mrcdiag:job_step_time_seconds:median", "{{job}}")], "s"
        ),
        Panel(
            "GPU utilization by node",
            [("avg by (node) (mrcdiag_gpu_utilization_ratio)", "{{node}}")],
            "percentunit",
            gpu_only=True,
        ),
        Panel(
            "GPUs held down by thermal or power limits",
            [
                (
                    f'sum by (node, reason) (mrcdiag_gpu_clock_event_active{{reason=~"{THROTTLE}"}})',
                    "{{node}} {{reason}}",
                )
            ],
            "short",
            gpu_only=True,
        ),
        Panel(
            "GPU errors (XID, uncorrected ECC) per hour",
            [
                (
                    "sum by (node) (increase(mrcdiag_gpu_xid_errors_total[1h])) or "
                    'sum by (node) (increase(mrcdiag_gpu_ecc_errors_total{type="uncorrected"}[1h]))',
                    "{{node}}",
                )
            ],
            "short",
            gpu_only=True,
        ),
        Panel(
            "Host NIC errors and drops",
            [
                (
                    f"sum by (node) (rate(mrcdiag_host_network_receive_errors_total[{RI}]) + "
                    f"rate(mrcdiag_host_network_receive_drops_total[{RI}]) + "
                    f"rate(mrcdiag_host_network_transmit_drops_total[{RI}]))",
                    "{{node}}",
                )
            ],
            "pps",
        ),
        Panel(
            "Fabric port errors",
            [
                (
                    f"sum by (node, device, port) (rate(mrcdiag_fabric_port_errors_total[{RI}]))",
                    "{{node}} {{device}}/{{port}}",
                )
            ],
            "short",
            fabric_only=True,
        ),
        Panel(
            "Fabric ports down",
            [("count by (node) (mrcdiag_fabric_port_up == 0) or vector(0)", "{{node}}")],
            "short",
            fabric_only=True,
        ),
    ]


def job_panels() -> list[Panel]:
    return [
        Panel(
            "Step time per rank",
            [(f"mrcdiag:rank_step_time_seconds:mean1m{{{RANK_SEL}}}", "{{rank}}")],
            "s",
            "heatmap",
            24,
            10,
            description="Each row is a rank; a straggler is the row that stays hot.",
        ),
        Panel(
            "Slowest ranks (straggler score: share of the step others wait for it)",
            [(f"topk(10, mrcdiag:rank_lateness:ratio{{{SEL}}})", "")],
            "percentunit",
            "table",
            12,
        ),
        Panel(
            "Median step time",
            [(f"mrcdiag:job_step_time_seconds:median{{{SEL}}}", "{{job}}")],
            "s",
            width=12,
        ),
        Panel(
            "Time in collectives by op",
            [
                (
                    f"sum by (op) (rate(mrcdiag_collective_duration_seconds_sum{{{RANK_SEL}}}[{RI}]))"
                    " / scalar(count(count by (rank) "
                    f"(mrcdiag_collective_duration_seconds_count{{{RANK_SEL}}})))",
                    "{{op}}",
                )
            ],
            "s",
            description="Seconds per second per rank, arrival to completion",
        ),
        Panel(
            "Collective bandwidth by op (bytes over time in the op)",
            [(f"mrcdiag:collective_bandwidth_bytes_per_second:rate1m{{{SEL}}}", "{{op}}")],
            "Bps",
        ),
        Panel(
            "Collective time p90 by op and size",
            [
                (
                    f"histogram_quantile(0.9, sum by (op, size, le) "
                    f"(rate(mrcdiag_collective_duration_seconds_bucket{{{RANK_SEL}}}[{RI}])))",
                    "{{op}} {{size}}",
                )
            ],
            "s",
        ),
        Panel(
            "DataLoader wait share of the step",
            [
                (
                    f"sum by (rank) (rate(mrcdiag_data_wait_seconds_total{{{RANK_SEL}}}[{RI}])) / "
                    f"sum by (rank) (rate(mrcdiag_step_duration_seconds_sum{{{RANK_SEL}}}[{RI}]))",
                    "{{rank}}",
                )
            ],
            "percentunit",
        ),
        Panel(
            "Active findings (the live analysis)",
            [
                (
                    f"max by (kind, cause, severity, rank, node) "
                    f"(mrcdiag_finding_active{{{SEL}}}) == 1",
                    "",
                )
            ],
            "short",
            "table",
            12,
            description="What the analysis beside global rank 0 finds now, with the same "
            "kinds, causes and severities as `mrcdiag report`; a row leaves when its "
            "finding ends. The job's run directory has each one's start and end "
            "(findings.jsonl).",
        ),
        Panel(
            "Time lost to findings",
            [
                (
                    f"sum by (kind, cause, rank, node) "
                    f"(rate(mrcdiag_finding_time_lost_seconds_total{{{SEL}}}[{RI}]))",
                    "{{kind}} {{cause}} {{rank}} {{node}}",
                )
            ],
            "percentunit",
            description="Seconds per second the job would have saved without each cause.",
        ),
        Panel(
            "Steps per second per rank",
            [(f"rate(mrcdiag_steps_total{{{RANK_SEL}}}[{RI}])", "{{rank}}")],
            "short",
        ),
    ]


def node_panels() -> list[Panel]:
    return [
        Panel(
            "GPU utilization",
            [(f"mrcdiag_gpu_utilization_ratio{{{NODE_SEL}}}", "{{node}} gpu{{gpu}}")],
            "percentunit",
            gpu_only=True,
        ),
        Panel(
            "GPU memory bandwidth utilization",
            [
                (
                    f"mrcdiag_gpu_memory_bandwidth_utilization_ratio{{{NODE_SEL}}}",
                    "{{node}} gpu{{gpu}}",
                )
            ],
            "percentunit",
            gpu_only=True,
        ),
        Panel(
            "SM clock against its maximum",
            [
                (
                    f"mrcdiag_gpu_sm_clock_hertz{{{NODE_SEL}}} / "
                    f"mrcdiag_gpu_sm_clock_max_hertz{{{NODE_SEL}}}",
                    "{{node}} gpu{{gpu}}",
                )
            ],
            "percentunit",
            gpu_only=True,
        ),
        Panel(
            "Clock event (throttle) reasons active",
            [
                (
                    f'mrcdiag_gpu_clock_event_active{{{NODE_SEL},reason=~"{THROTTLE}"}} == 1',
                    "{{node}} gpu{{gpu}} {{reason}}",
                )
            ],
            "short",
            gpu_only=True,
        ),
        Panel(
            "GPU power",
            [(f"mrcdiag_gpu_power_watts{{{NODE_SEL}}}", "{{node}} gpu{{gpu}}")],
            "watt",
            gpu_only=True,
        ),
        Panel(
            "GPU temperature",
            [(f"mrcdiag_gpu_temperature_celsius{{{NODE_SEL}}}", "{{node}} gpu{{gpu}}")],
            "celsius",
            gpu_only=True,
        ),
        Panel(
            "NVLink traffic",
            [
                (
                    f"mrcdiag_gpu_nvlink_transmit_bytes_per_second{{{NODE_SEL}}}",
                    "{{node}} gpu{{gpu}} tx",
                )
            ],
            "Bps",
            gpu_only=True,
        ),
        Panel(
            "PCIe traffic",
            [
                (
                    f"mrcdiag_gpu_pcie_transmit_bytes_per_second{{{NODE_SEL}}}",
                    "{{node}} gpu{{gpu}} tx",
                )
            ],
            "Bps",
            gpu_only=True,
        ),
        Panel(
            "InfiniBand / RoCE traffic per port",
            [
                (
                    f"rate(mrcdiag_fabric_port_transmit_bytes_total{{{NODE_SEL}}}[{RI}])",
                    "{{node}} {{device}}/{{port}} tx",
                ),
                (
                    f"rate(mrcdiag_fabric_port_receive_bytes_total{{{NODE_SEL}}}[{RI}])",
                    "{{node}} {{device}}/{{port}} rx",
                ),
            ],
            "Bps",
            fabric_only=True,
        ),
        Panel(
            "Fabric congestion and retransmissions",
            [
                (
                    f"rate(mrcdiag_fabric_port_transmit_wait_total{{{NODE_SEL}}}[{RI}])",
                    "{{node}} {{device}}/{{port}} xmit_wait",
                ),
                (
                    f"rate(mrcdiag_fabric_hw_counter_total{{{NODE_SEL},counter=~"
                    f'"np_ecn_marked_roce_packets|np_cnp_sent|roce_adp_retrans|out_of_sequence"}}'
                    f"[{RI}])",
                    "{{node}} {{device}}/{{port}} {{counter}}",
                ),
            ],
            "short",
            fabric_only=True,
        ),
        Panel(
            "Host CPU",
            [(f"avg by (node) (mrcdiag_host_cpu_utilization_ratio{{{NODE_SEL}}})", "{{node}}")],
            "percentunit",
        ),
        Panel(
            "Rank run-queue wait (CPU contention)",
            [
                (
                    f"rate(mrcdiag_rank_cpu_wait_seconds_total{{{NODE_SEL}}}[{RI}])",
                    "{{node}} rank {{rank}}",
                )
            ],
            "percentunit",
        ),
        Panel(
            "Rank time stopped (SIGSTOP, a scheduler's suspend: the job waits for it)",
            [
                (
                    f"rate(mrcdiag_rank_stopped_seconds_total{{{NODE_SEL}}}[{RI}])",
                    "{{node}} rank {{rank}}",
                )
            ],
            "percentunit",
        ),
        Panel(
            "Host NIC traffic",
            [
                (
                    f"rate(mrcdiag_host_network_transmit_bytes_total{{{NODE_SEL}}}[{RI}])",
                    "{{node}} {{nic}} tx",
                ),
                (
                    f"rate(mrcdiag_host_network_receive_bytes_total{{{NODE_SEL}}}[{RI}])",
                    "{{node}} {{nic}} rx",
                ),
            ],
            "Bps",
        ),
        Panel(
            "Host memory", [(f"mrcdiag_host_memory_used_bytes{{{NODE_SEL}}}", "{{node}}")], "bytes"
        ),
        Panel(
            "PCIe link against its maximum (compare while busy: idle links slow down)",
            [
                (
                    f"mrcdiag_gpu_pcie_link_generation{{{NODE_SEL}}} / "
                    f"mrcdiag_gpu_pcie_link_generation_max{{{NODE_SEL}}}",
                    "{{node}} gpu{{gpu}} generation",
                ),
                (
                    f"mrcdiag_gpu_pcie_link_width{{{NODE_SEL}}} / "
                    f"mrcdiag_gpu_pcie_link_width_max{{{NODE_SEL}}}",
                    "{{node}} gpu{{gpu}} width",
                ),
            ],
            "percentunit",
            gpu_only=True,
        ),
        Panel(
            "GPU memory per rank, of its device (reserved now and at peak)",
            [
                (
                    f"mrcdiag_rank_memory_reserved_bytes{{{NODE_SEL}}} / "
                    f"mrcdiag_rank_memory_total_bytes{{{NODE_SEL}}}",
                    "{{node}} rank {{rank}}",
                ),
                (
                    f"mrcdiag_rank_memory_peak_reserved_bytes{{{NODE_SEL}}} / "
                    f"mrcdiag_rank_memory_total_bytes{{{NODE_SEL}}}",
                    "{{node}} rank {{rank}} peak",
                ),
            ],
            "percentunit",
        ),
        Panel(
            "Allocator retries per rank (each frees the cache and synchronizes the GPU)",
            [
                (
                    f"rate(mrcdiag_rank_memory_alloc_retries_total{{{NODE_SEL}}}[{RI}])",
                    "{{node}} rank {{rank}}",
                )
            ],
            "ops",
        ),
    ]


# file name -> (uid, title, panels, has a rank variable, tags)
DASHBOARDS = {
    "mrcdiag-cluster-overview.json": (
        "mrcdiag-cluster",
        "mrcdiag / Cluster overview",
        cluster_panels,
        False,
        ["cluster"],
    ),
    "mrcdiag-job.json": ("mrcdiag-job", "mrcdiag / Job drill-down", job_panels, True, ["job"]),
    "mrcdiag-node.json": ("mrcdiag-node", "mrcdiag / Node", node_panels, False, ["node"]),
}
ANNOTATIONS = {"mrcdiag-job.json": [FINDING_ANNOTATION]}


def all_dashboards() -> dict[str, dict[str, Any]]:
    return {
        name: _dashboard(uid, title, panels(), with_rank, tags, ANNOTATIONS.get(name))
        for name, (uid, title, panels, with_rank, tags) in DASHBOARDS.items()
    }


def panel_specs() -> dict[str, list[Panel]]:
    """The Panel records behind each dashboard (tests read which are GPU- or fabric-only)."""
    return {name: spec[2]() for name, spec in DASHBOARDS.items()}


def export(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, dashboard in all_dashboards().items():
        path = directory / name
        path.write_text(json.dumps(dashboard, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
