"""`mrcdiag topo`: a node's GPU wiring as a matrix, and what it means for collectives."""

from __future__ import annotations

from typing import Any

from mrcdiag.collectors.topology import PATH_MEANING, path_between


def render_topology(topology: dict[str, Any], host: str) -> str:
    gpus = topology.get("gpus", [])
    if not gpus:
        return f"{host}: no GPU\n"
    n = len(gpus)
    head = ["", *[f"GPU{g['index']}" for g in gpus], "PCIe now/max", "NUMA", "CPUs"]
    rows = [head]
    for g in gpus:
        cells = [f"GPU{g['index']}"]
        for other in gpus:
            if other["index"] == g["index"]:
                cells.append("X")
                continue
            pair = path_between(topology, g["index"], other["index"]) or {}
            mark = "" if pair.get("p2p") in ("ok", None) else "*"
            cells.append(f"{pair.get('path', '?')}{mark}")
        cells += [_pcie(g), _or_dash(g.get("numa_node")), _cpu_ranges(g.get("cpus"))]
        rows.append(cells)
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = [f"{host}: {n} GPU(s), {gpus[0].get('name', '')}".rstrip(", ")]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append("")
    lines += ["  " + line for line in what_it_means(topology)]
    return "\n".join(lines) + "\n"


def what_it_means(topology: dict[str, Any]) -> list[str]:
    """The wiring's consequences for collectives, one line each."""
    out = []
    paths = sorted({p["path"] for p in topology.get("pairs", [])})
    for path in paths:
        key = "NV" if path.startswith("NV") else path
        if key in PATH_MEANING:
            out.append(f"{path}: {PATH_MEANING[key]}")
    no_p2p = [p for p in topology.get("pairs", []) if p.get("p2p") not in ("ok", None)]
    if no_p2p:
        reasons = sorted({p["p2p"] for p in no_p2p})
        out.append(
            f"* no peer-to-peer between {len(no_p2p)} pair(s) ({', '.join(reasons)}): their "
            "collectives stage through host memory, bounded by PCIe to the CPU and back"
        )
    for g in topology.get("gpus", []):
        if _below_max(g):
            out.append(
                f"GPU{g['index']}: PCIe link at {_pcie(g)}: below its maximum (an idle link "
                "drops its generation to save power; the same under load is a link that "
                "trained down: reseat the card, check the riser and the slot)"
            )
    return out


def _below_max(g: dict[str, Any]) -> bool:
    pairs = (("pcie_gen", "pcie_gen_max"), ("pcie_width", "pcie_width_max"))
    return any(
        g.get(now) is not None and g.get(top) is not None and g[now] < g[top] for now, top in pairs
    )


def _pcie(g: dict[str, Any]) -> str:
    if g.get("pcie_gen") is None:
        return "-"
    return (
        f"Gen{g['pcie_gen']} x{g.get('pcie_width', '?')} / "
        f"Gen{g.get('pcie_gen_max', '?')} x{g.get('pcie_width_max', '?')}"
    )


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _cpu_ranges(cpus: list[int] | None) -> str:
    if not cpus:
        return "-"
    out, start, prev = [], cpus[0], cpus[0]
    for c in cpus[1:] + [None]:  # type: ignore[list-item]
        if c is not None and c == prev + 1:
            prev = c
            continue
        out.append(f"{start}-{prev}" if prev != start else str(start))
        if c is not None:
            start = prev = c
    return ",".join(out)
