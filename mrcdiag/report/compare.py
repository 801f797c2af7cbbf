"""What changed between a good run and a slow one of the same job."""

from __future__ import annotations

from typing import Any

from mrcdiag.analyzers import Analysis


def _ratio(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old == 0:
        return None
    return new / old


def compare(current: Analysis, baseline: Analysis) -> dict[str, Any]:
    cur, base = current.summary, baseline.summary
    ops = []
    base_ops = {(o.op, o.group_size): o for o in base.per_op}
    for o in cur.per_op:
        b = base_ops.get((o.op, o.group_size))
        ops.append(
            {
                "op": o.op,
                "group_size": o.group_size,
                "busbw_gbps": {
                    "baseline": b.busbw_median_gbps if b else None,
                    "current": o.busbw_median_gbps,
                },
                "busbw_ratio": _ratio(o.busbw_median_gbps, b.busbw_median_gbps if b else None),
                "time_per_rank_s": {
                    "baseline": b.time_total_s if b else None,
                    "current": o.time_total_s,
                },
            }
        )
    key = lambda f: (f.kind, f.cause, f.ranks, f.nodes)  # noqa: E731
    base_keys = {key(f) for f in baseline.findings if f.severity != "info"}
    cur_keys = {key(f) for f in current.findings if f.severity != "info"}
    base_lost = {key(f): f.time_lost_s for f in baseline.findings}
    return {
        "baseline_run_dirs": [str(d) for d in baseline.run.run_dirs],
        "step_time_p50_s": {
            "baseline": base.step_time_p50_s,
            "current": cur.step_time_p50_s,
            "ratio": _ratio(cur.step_time_p50_s, base.step_time_p50_s),
        },
        "comm_fraction": {"baseline": base.comm_fraction, "current": cur.comm_fraction},
        "data_wait_fraction": {
            "baseline": base.data_wait_fraction,
            "current": cur.data_wait_fraction,
        },
        "per_op": ops,
        "new_findings": [
            f.as_json()
            for f in current.findings
            if f.severity != "info" and key(f) not in base_keys
        ],
        # present in both, but now costing at least twice as much
        "worse_findings": [
            {**f.as_json(), "baseline_time_lost_s": base_lost[key(f)]}
            for f in current.findings
            if f.severity != "info"
            and key(f) in base_keys
            and f.time_lost_s >= WORSE * max(base_lost[key(f)], 1e-9)
        ],
        "gone_findings": [
            f.as_json()
            for f in baseline.findings
            if f.severity != "info" and key(f) not in cur_keys
        ],
    }


WORSE = 2.0


def render_compare_text(diff: dict[str, Any]) -> str:
    lines = [f"Compared with {', '.join(diff['baseline_run_dirs'])}:"]
    st = diff["step_time_p50_s"]
    if st["ratio"] is not None:
        lines.append(
            f"  step time p50 {st['baseline'] * 1e3:.1f} ms -> {st['current'] * 1e3:.1f} ms"
            f" ({100 * (st['ratio'] - 1):+.0f}%)"
        )
    for op in diff["per_op"]:
        bw = op["busbw_gbps"]
        if op["busbw_ratio"] is not None:
            lines.append(
                f"  {op['op']} (group of {op['group_size']}): busbw "
                f"{bw['baseline']:.3f} -> {bw['current']:.3f} GB/s "
                f"({100 * (op['busbw_ratio'] - 1):+.0f}%)"
            )
    for f in diff["new_findings"]:
        lines.append(
            f"  new: {f['kind']} {f['cause']} ranks {f['ranks']} ({f['time_lost_s']:.2f} s lost)"
        )
    for f in diff["worse_findings"]:
        lines.append(
            f"  worse: {f['kind']} {f['cause']} ranks {f['ranks']} "
            f"({f['baseline_time_lost_s']:.2f} -> {f['time_lost_s']:.2f} s lost)"
        )
    for f in diff["gone_findings"]:
        lines.append(f"  gone: {f['kind']} {f['cause']} ranks {f['ranks']}")
    if not (diff["new_findings"] or diff["worse_findings"] or diff["gone_findings"]):
        lines.append("  no finding appeared, grew or disappeared")
    return "\n".join(lines) + "\n"
