"""The comparison with a baseline run, as text (the analysis is analyzers/compare.py)."""

from __future__ import annotations

from mrcdiag.analyzers.compare import Comparison


def render_compare_text(diff: Comparison) -> str:
    lines = [f"Compared with {', '.join(diff.baseline_run_dirs)}:"]
    st = diff.step_time_p50_s
    if st.ratio is not None and st.baseline is not None and st.current is not None:
        lines.append(
            f"  step time p50 {st.baseline * 1e3:.1f} ms -> {st.current * 1e3:.1f} ms"
            f" ({100 * (st.ratio - 1):+.0f}%)"
        )
    for op in diff.per_op:
        bw = op.busbw_gbps
        if bw.ratio is not None and bw.baseline is not None and bw.current is not None:
            lines.append(
                f"  {op.op} ({op.group}): busbw "
                f"{bw.baseline:.3f} -> {bw.current:.3f} GB/s ({100 * (bw.ratio - 1):+.0f}%)"
            )
    for f in diff.new_findings:
        lines.append(
            f"  new: {f.kind} {f.cause} ranks {list(f.ranks)} ({f.time_lost_s:.2f} s lost)"
        )
    for f, baseline_lost in diff.worse_findings:
        lines.append(
            f"  worse: {f.kind} {f.cause} ranks {list(f.ranks)} "
            f"({baseline_lost:.2f} -> {f.time_lost_s:.2f} s lost)"
        )
    for f in diff.gone_findings:
        lines.append(f"  gone: {f.kind} {f.cause} ranks {list(f.ranks)}")
    if not (diff.new_findings or diff.worse_findings or diff.gone_findings):
        lines.append("  no finding appeared, grew or disappeared")
    return "\n".join(lines) + "\n"
