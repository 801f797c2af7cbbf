"""The nodes to take out of the next run, in the forms schedulers take.

Only anomalies that are critical, and hangs (a rank that stopped, a node that died), put
a node here; efficiency findings and warnings never do: excluding a node is expensive,
and a healthy job's shape is no reason for it.
"""

from __future__ import annotations

import re

from mrcdiag.analyzers.findings import Finding

# The taint a cordoned node gets, so that a new pod does not land on it either
TAINT = "mrcdiag.io/unhealthy=true:NoSchedule"


def nodes_to_exclude(findings: list[Finding]) -> list[str]:
    nodes = {
        node
        for f in findings
        if f.is_anomaly and (f.severity == "critical" or f.kind == "hang")
        for node in f.nodes
    }
    return sorted(nodes)


def slurm_hostlist(nodes: list[str]) -> str:
    """Slurm's compressed form: node[01-03,07],gpu-a ("node01,node02,node03" becomes
    node[01-03]); names without a number stay as they are."""
    by_prefix: dict[tuple[str, str, int], list[int]] = {}
    plain = []
    for node in nodes:
        m = re.fullmatch(r"(.*?)(\d+)([^\d]*)", node)
        if not m:
            plain.append(node)
            continue
        prefix, digits, suffix = m.groups()
        width = len(digits) if digits.startswith("0") and len(digits) > 1 else 0
        by_prefix.setdefault((prefix, suffix, width), []).append(int(digits))
    parts = []
    for (prefix, suffix, width), numbers in sorted(by_prefix.items()):
        numbers = sorted(set(numbers))
        if len(numbers) == 1:
            parts.append(f"{prefix}{numbers[0]:0{width}d}{suffix}")
            continue
        spans, start, prev = [], numbers[0], numbers[0]
        for n in numbers[1:] + [None]:
            if n is not None and n == prev + 1:
                prev = n
                continue
            spans.append(
                f"{start:0{width}d}" if start == prev else f"{start:0{width}d}-{prev:0{width}d}"
            )
            if n is not None:
                start = prev = n
        parts.append(f"{prefix}[{','.join(spans)}]{suffix}")
    return ",".join(parts + sorted(plain))


def render_exclude(findings: list[Finding]) -> str:
    """The exclusion in each form; "" when no node should go."""
    nodes = nodes_to_exclude(findings)
    if not nodes:
        return ""
    lines = [
        f"# {len(nodes)} node(s) to take out: critical anomalies and hangs in this run",
        "# Slurm (sbatch/srun):",
        f"--exclude={slurm_hostlist(nodes)}",
        "# Kubernetes:",
    ]
    for node in nodes:
        lines.append(f"kubectl cordon {node} && kubectl taint nodes {node} {TAINT}")
    lines.append("# a plain list (torchrun hosts files, other schedulers):")
    lines += nodes
    return "\n".join(lines) + "\n"
