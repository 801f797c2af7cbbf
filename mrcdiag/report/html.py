"""The HTML report: one self-contained file (inline SVG and CSS, no script, no network).

Large runs stay small: heatmaps bin ranks into at most 128 rows and steps into at most
200 columns, and the per-rank breakdown into at most 64 bars; every cell and bar carries
its numbers in a tooltip (SVG <title>).
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

from mrcdiag.analyzers import Analysis
from mrcdiag.analyzers.compare import Comparison
from mrcdiag.metrics import GPU_MEMORY_BANDWIDTH_UTILIZATION, GPU_SM_CLOCK, GPU_UTILIZATION
from mrcdiag.report.capture import capture_line
from mrcdiag.store.schema import OPS

MAX_ROWS, MAX_COLS, MAX_BARS = 128, 200, 64
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1180px;color:#1d2330;background:#fff}h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e3e6ec;padding-bottom:4px}
.muted{color:#66708a}.headline{font-size:15px;margin:6px 0}.ok{color:#1a7f37}
.finding{border-left:4px solid #ccc;padding:6px 12px;margin:10px 0;background:#f8f9fb}
.critical{border-color:#d1242f}.warning{border-color:#d4a72c}.info{border-color:#54aeff}
.sev{font-weight:600;text-transform:uppercase;font-size:12px}table{border-collapse:collapse}
td,th{padding:3px 10px;text-align:right;border-bottom:1px solid #eef0f4}th{color:#66708a}
td:first-child,th:first-child{text-align:left}svg{display:block;margin:6px 0}
.legend span{display:inline-block;margin-right:14px}.legend i{display:inline-block;width:10px;
height:10px;margin-right:4px}code{background:#f1f3f6;padding:1px 4px;border-radius:3px}
"""
PLOT_OF = {
    "straggler": "lateness",
    "slowdown": "steps",
    "idle_compute": "breakdown",
    "interconnect": "busbw",
    "hang": "lateness",
}


MAX_STACK_GROUPS = 20  # rows of the stacks table; the JSON report has them all


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _color(x: float) -> str:
    """0..1 -> a perceptual ramp from pale yellow to dark red (NaN: light grey)."""
    if not math.isfinite(x):
        return "#eeeeee"
    x = min(max(x, 0.0), 1.0)
    stops = [(255, 247, 188), (254, 196, 79), (236, 112, 20), (204, 76, 2), (102, 37, 6)]
    pos = x * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    f = pos - i
    r, g, b = (int(a + (c - a) * f) for a, c in zip(stops[i], stops[i + 1], strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def _bins(n: int, limit: int) -> list[np.ndarray]:
    return [a for a in np.array_split(np.arange(n), min(n, limit)) if len(a)]


def _heatmap(
    matrix: np.ndarray,
    ranks: np.ndarray,
    steps: np.ndarray,
    unit_scale: float,
    unit: str,
    lo: float,
    hi: float,
    reduce_rows: str = "max",
) -> str:
    if matrix.size == 0:
        return "<p class=muted>No data.</p>"
    row_bins, col_bins = _bins(matrix.shape[0], MAX_ROWS), _bins(matrix.shape[1], MAX_COLS)
    width, left = 980, 70
    cw = (width - left) / len(col_bins)
    ch = max(3.0, min(14.0, 420 / len(row_bins)))
    height = ch * len(row_bins) + 30
    parts = [
        f'<svg width="{width}" height="{height:.0f}" xmlns="http://www.w3.org/2000/svg" '
        'font-size="10">'
    ]
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            rows = [
                np.nanmax(matrix[b], axis=0)
                if reduce_rows == "max"
                else np.nanmean(matrix[b], axis=0)
                for b in row_bins
            ]
            for i, (rb, row) in enumerate(zip(row_bins, rows, strict=True)):
                label = (
                    f"rank {ranks[rb[0]]}"
                    if len(rb) == 1
                    else f"ranks {ranks[rb[0]]}-{ranks[rb[-1]]}"
                )
                y = i * ch
                if len(row_bins) <= 40 or i % max(1, len(row_bins) // 20) == 0:
                    parts.append(
                        f'<text x="{left - 4}" y="{y + ch - 1:.1f}" '
                        f'text-anchor="end">{_e(label)}</text>'
                    )
                for j, cb in enumerate(col_bins):
                    v = float(np.nanmean(row[cb]))
                    norm = (v - lo) / (hi - lo) if hi > lo else 0.0
                    step_label = (
                        f"step {steps[cb[0]]}"
                        if len(cb) == 1
                        else f"steps {steps[cb[0]]}-{steps[cb[-1]]}"
                    )
                    parts.append(
                        f'<rect x="{left + j * cw:.1f}" y="{y:.1f}" width="{cw + 0.3:.1f}" '
                        f'height="{ch + 0.3:.1f}" fill="{_color(norm)}"><title>{_e(label)}, '
                        f"{step_label}: {v * unit_scale:.2f} {unit}</title></rect>"
                    )
    parts.append(
        f'<text x="{left}" y="{height - 8:.0f}">step {steps[0]}</text>'
        f'<text x="{width}" y="{height - 8:.0f}" text-anchor="end">step {steps[-1]}'
        f"</text>"
    )
    parts.append("</svg>")
    parts.append(
        f'<p class="muted legend"><span><i style="background:{_color(0)}"></i>'
        f'{lo * unit_scale:.1f} {unit}</span><span><i style="background:{_color(1)}">'
        f"</i>{hi * unit_scale:.1f} {unit} or more</span></p>"
    )
    return "".join(parts)


def _busbw_plot(analysis: Analysis) -> str:
    inst, run = analysis.instances, analysis.run
    if inst.n_instances == 0:
        return "<p class=muted>No collectives.</p>"
    bw = analysis.busbw_gbps
    ok = ~np.isnan(bw) & (inst.nbytes > 0)
    if not ok.any():
        return "<p class=muted>No collective with a measurable transfer.</p>"
    width, height, left, bottom = 980, 320, 70, 40
    sizes = np.log2(np.maximum(inst.nbytes[ok], 1))
    xs_lo, xs_hi = float(sizes.min()) - 0.5, float(sizes.max()) + 0.5
    ymax = float(np.nanpercentile(bw[ok], 99)) * 1.1 or 1.0
    parts = [
        f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" '
        'font-size="10">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" '
        'stroke="#999"/>',
        f'<line x1="{left}" y1="0" x2="{left}" y2="{height - bottom}" stroke="#999"/>',
        f'<text x="{left - 6}" y="10" text-anchor="end">{ymax:.2f}</text>',
        f'<text x="{left - 6}" y="{height - bottom}" text-anchor="end">0 GB/s</text>',
    ]
    legend = []
    keys = sorted({(int(o), int(g)) for o, g in zip(inst.op[ok], inst.group[ok], strict=True)})
    for k, (op, group) in enumerate(keys[:10]):
        color = PALETTE[k % len(PALETTE)]
        sel = ok & (inst.op == op) & (inst.group == group)
        name = f"{OPS[op]} · group {run.groups[group].name} ({run.groups[group].size} ranks)"
        legend.append(f'<span><i style="background:{color}"></i>{_e(name)}</span>')
        for size in np.unique(inst.nbytes[sel]):
            vals = bw[sel & (inst.nbytes == size)]
            med = float(np.median(vals))
            x = left + (math.log2(max(size, 1)) - xs_lo) / (xs_hi - xs_lo) * (width - left - 10)
            y = (height - bottom) * (1 - min(med / ymax, 1))
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}">'
                f"<title>{_e(name)}: {int(size)} bytes, median busbw {med:.3f} GB/s "
                f"over {len(vals)} calls</title></circle>"
            )
    for p in range(int(math.ceil(xs_lo)), int(xs_hi) + 1, 2):
        x = left + (p - xs_lo) / (xs_hi - xs_lo) * (width - left - 10)
        parts.append(
            f'<text x="{x:.1f}" y="{height - bottom + 14}" text-anchor="middle">'
            f"{_human_bytes(2**p)}</text>"
        )
    parts.append(
        f'<text x="{(width + left) / 2}" y="{height - 6}" text-anchor="middle">'
        "message size (nccl-tests bytes)</text></svg>"
    )
    return "".join(parts) + f'<p class="legend">{"".join(legend)}</p>'


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.0f} TiB"


def _breakdown(analysis: Analysis) -> str:
    split = analysis.summary.time_split
    if not split:
        return "<p class=muted>No steps.</p>"
    ranks = np.array([r.rank for r in split])
    dur = np.array([r.step_time_s for r in split])
    wait = np.array([r.waiting_s for r in split])
    data = np.array([r.data_wait_s for r in split])
    exposed = np.array([r.exposed_comm_s for r in split])
    compute = np.array([r.compute_s for r in split])
    parts_names = [
        ("compute", compute, "#4c78a8"),
        ("data wait", data, "#f58518"),
        ("exposed communication", exposed, "#54a24b"),
        ("waiting on peers", wait, "#e45756"),
    ]
    bars = _bins(len(ranks), MAX_BARS)
    width, left, bh = 980, 90, max(6, min(18, 460 // len(bars)))
    out = [
        f'<svg width="{width}" height="{bh * len(bars) + 10}" '
        'xmlns="http://www.w3.org/2000/svg" font-size="10">'
    ]
    for i, b in enumerate(bars):
        total = float(dur[b].sum()) or 1.0
        x = float(left)
        label = f"rank {ranks[b[0]]}" if len(b) == 1 else f"ranks {ranks[b[0]]}-{ranks[b[-1]]}"
        out.append(
            f'<text x="{left - 4}" y="{i * bh + bh - 2}" text-anchor="end">{_e(label)}</text>'
        )
        for name, values, color in parts_names:
            share = float(values[b].sum()) / total
            w = share * (width - left - 10)
            out.append(
                f'<rect x="{x:.1f}" y="{i * bh}" width="{w:.1f}" height="{bh - 2}" '
                f'fill="{color}"><title>{_e(label)}: {name} {100 * share:.1f}%</title>'
                "</rect>"
            )
            x += w
    out.append("</svg>")
    legend = "".join(f'<span><i style="background:{c}"></i>{n}</span>' for n, _, c in parts_names)
    return "".join(out) + f'<p class="legend">{legend}</p>'


def _gpu_plots(analysis: Analysis) -> str:
    run = analysis.run
    metrics = [
        (GPU_UTILIZATION, "GPU utilization", 1.0),
        (GPU_MEMORY_BANDWIDTH_UTILIZATION, "memory bandwidth", 1.0),
        (GPU_SM_CLOCK, "SM clock (GHz)", 1e-9),
    ]
    out = []
    for host, samples in sorted(run.node_samples.items()):
        for name, title, scale in metrics:
            mask = samples["name"] == name
            if mask.sum() < 2:
                continue
            t = samples["t_ns"][mask]
            t0, t1 = float(t.min()), float(t.max()) or 1.0
            values = samples["value"][mask] * scale
            vmax = float(values.max()) or 1.0
            width, height, left = 980, 140, 70
            svg = [
                f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" '
                f'font-size="10"><text x="{left}" y="10">{_e(host)}: {title}</text>'
            ]
            for k, labels in enumerate(sorted(set(samples["labels"][mask]))[:16]):
                sel = samples["labels"][mask] == labels
                pts = " ".join(
                    f"{left + (tt - t0) / max(t1 - t0, 1) * (width - left - 10):.1f},"
                    f"{(height - 15) * (1 - v / vmax) + 12:.1f}"
                    for tt, v in zip(t[sel], values[sel], strict=True)
                )
                svg.append(
                    f'<polyline fill="none" stroke="{PALETTE[k % 10]}" points="{pts}">'
                    f"<title>{_e(labels)}</title></polyline>"
                )
            svg.append(f'<text x="{left - 4}" y="16" text-anchor="end">{vmax:.2f}</text></svg>')
            out.append("".join(svg))
    return "".join(out)


def _findings(analysis: Analysis, anomalies: bool = True) -> str:
    chosen = [f for f in analysis.findings if f.is_anomaly == anomalies]
    if not chosen:
        return (
            '<p class="ok">No anomaly: no rank, node, link or GPU stands out.</p>'
            if anomalies
            else ""
        )
    out = []
    for f in chosen:
        target = "gpu" if f.cause == "gpu_throttling" else PLOT_OF.get(f.kind, "steps")
        where = []
        if f.ranks:
            where.append(
                "rank " + ", ".join(map(str, f.ranks[:10])) + ("…" if len(f.ranks) > 10 else "")
            )
        if f.nodes:
            where.append("node " + ", ".join(f.nodes[:6]))
        evidence = "".join(
            f"<li><code>{_e(k)}</code>: {_e(v)}</li>" for k, v in list(f.evidence.items())[:10]
        )
        out.append(
            f'<div class="finding {f.severity}"><span class="sev">{_e(f.severity)}</span> '
            f"<b>{_e(f.kind)}</b> · cause <b>{_e(f.cause)}</b> · {_e(' · '.join(where))} · "
            f'<b>{f.time_lost_s:.2f} s lost</b> · <a href="#{target}">see the plot</a>'
            f"<div>{_e(f.summary)}</div><ul>{evidence}</ul>"
            f"<div>→ {_e(f.recommendation)}</div></div>"
        )
    return "".join(out)


def _stack_groups(analysis: Analysis) -> str:
    """Where each rank was when its stacks were taken (a hang, a stopped job): ranks with
    identical training-thread stacks are one row, so that the odd one out stands out."""
    if not analysis.stack_groups:
        return ""
    rows = "".join(
        f"<tr><td>{_e(g['ranks'])}</td><td>{g['count']}</td>"
        f"<td><code>{_e(g['user_frame'] or '-')}</code></td>"
        f"<td><code>{'<br>'.join(_e(f) for f in g['innermost'])}</code></td></tr>"
        for g in analysis.stack_groups[:MAX_STACK_GROUPS]
    )
    more = len(analysis.stack_groups) - MAX_STACK_GROUPS
    return (
        '<h2 id="stacks">Where each rank was</h2><p class=muted>Ranks grouped by identical '
        "stacks of their training thread, the largest group first: the ranks waiting "
        "together in a collective are one row, the one they wait for is another.</p>"
        "<table><tr><th>ranks</th><th>how many</th><th>in the job's code</th>"
        f"<th>innermost frames</th></tr>{rows}</table>"
        + (f"<p class=muted>{more} more groups in the JSON report.</p>" if more > 0 else "")
    )


def _tables(analysis: Analysis) -> str:
    s = analysis.summary
    rows = sorted(s.per_rank, key=lambda r: -r.step_time_p50_s)
    if len(rows) > 24:
        rows = rows[:16] + rows[-8:]
    memory = any(r.memory_peak_of_total is not None for r in rows)
    ranks = "".join(
        f"<tr><td>{r.rank}</td><td>{_e(r.host)}</td><td>{r.steps}</td>"
        f"<td>{r.step_time_p50_s * 1e3:.1f}</td><td>{r.step_time_p90_s * 1e3:.1f}</td>"
        f"<td>{100 * r.data_wait_fraction:.0f}%</td><td>{100 * r.comm_fraction:.0f}%</td>"
        + (
            f"<td>{'-' if r.memory_peak_of_total is None else f'{100 * r.memory_peak_of_total:.0f}%'}"
            "</td>"
            if memory
            else ""
        )
        + "</tr>"
        for r in rows
    )
    ops = "".join(
        f"<tr><td>{_e(o.op)}</td><td>{_e(o.group)}</td><td>{o.calls}</td>"
        f"<td>{_human_bytes(o.bytes_total)}</td><td>{o.time_total_s:.3f}</td>"
        f"<td>{o.wait_total_s:.3f}</td><td>"
        f"{'-' if o.busbw_median_gbps is None else f'{o.busbw_median_gbps:.3f}'}</td></tr>"
        for o in s.per_op[:20]
    )
    return (
        "<h2>Step time per rank (slowest first)</h2><table><tr><th>rank</th><th>node</th>"
        "<th>steps</th><th>p50 ms</th><th>p90 ms</th><th>data wait</th><th>in collectives</th>"
        + ("<th>GPU memory peak</th>" if memory else "")
        + f"</tr>{ranks}</table><h2>Collectives</h2><table><tr><th>op</th><th>group</th>"
        "<th>calls</th><th>bytes</th><th>time/rank s</th><th>waiting s</th><th>busbw GB/s</th>"
        f"</tr>{ops}</table>{_peers(s.per_peer)}<p>{_e(capture_line(s.coverage))}</p>"
    )


def _peers(per_peer: list) -> str:
    if not per_peer:
        return ""
    rows = "".join(
        f"<tr><td>{p.sender} → {p.receiver}</td><td>{p.sends}</td><td>{p.receives}</td>"
        f"<td>{_human_bytes(p.bytes_total)}</td><td>{p.send_time_s:.3f}</td>"
        f"<td>{p.receive_time_s:.3f}</td></tr>"
        for p in per_peer[:32]
    )
    return (
        "<h2>Point-to-point</h2><table><tr><th>from → to</th><th>sends</th><th>receives</th>"
        f"<th>bytes</th><th>in send s</th><th>in receive s</th></tr>{rows}</table>"
    )


def render_html(analysis: Analysis, diff: Comparison | None = None) -> str:
    run, s, m = analysis.run, analysis.summary, analysis.matrix
    cols = analysis.steady_steps
    job = (run.run.job if run.run else "") or "?"
    step_med = s.step_time_p50_s or 0.0
    serious = [f for f in analysis.findings if f.severity != "info"]
    headline = (
        "; ".join(
            f"{_e(f.cause)}"
            + (f" on rank {', '.join(map(str, f.ranks))}" if 0 < len(f.ranks) <= 4 else "")
            + f" ({f.time_lost_s:.2f} s lost)"
            for f in serious[:3]
        )
        if serious
        else '<span class="ok">no finding of severity warning or above</span>'
    )
    step_plot = (
        _heatmap(m.duration_s[:, cols], m.ranks, cols, 1e3, "ms", step_med * 0.8, step_med * 1.5)
        if len(cols)
        else ""
    )
    late = m.late_s[:, cols] if len(cols) else m.late_s
    late_hi = max(float(np.nanpercentile(np.abs(late), 99)) if np.isfinite(late).any() else 0, 1e-4)
    late_plot = _heatmap(late, m.ranks, cols, 1e3, "ms", 0.0, late_hi) if len(cols) else ""
    gpu = _gpu_plots(analysis)
    compare_html = ""
    if diff is not None:
        from mrcdiag.report.compare import render_compare_text

        compare_html = (
            f"<h2>Compared with the baseline</h2><pre>{_e(render_compare_text(diff))}</pre>"
        )
    problems = "".join(f"<li>{_e(p)}</li>" for p in analysis.notes[:30])
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>mrcdiag report: {_e(job)}</title><style>{CSS}</style></head><body>"
        f"<h1>mrcdiag report · {_e(job)}</h1>"
        f'<p class="muted">{run.world_size} ranks on {len(run.hosts)} node(s) · {s.steps} steps'
        f" · {s.duration_s:.1f} s · step time p50 {step_med * 1e3:.1f} ms, p90 "
        f"{(s.step_time_p90_s or 0) * 1e3:.1f} ms</p>"
        f'<p class="headline"><b>Top causes:</b> {headline}</p>'
        f"<h2>Anomalies, by time lost</h2>{_findings(analysis)}"
        f"{_stack_groups(analysis)}"
        f'<h2 id="steps">Step time per rank over steps</h2><p class=muted>Rows are ranks (or '
        "groups of ranks, their slowest shown), columns steps (or bins of steps). A straggler "
        f"is a row that stays dark; a slowdown is a band of columns.</p>{step_plot}"
        f'<h2 id="lateness">Arrival lateness at collectives</h2><p class=muted>How far behind '
        "the median of its peers each rank arrived; the rank everyone waits for is dark."
        f"</p>{late_plot}"
        f'<h2 id="busbw">Bus bandwidth against message size</h2>{_busbw_plot(analysis)}'
        f'<h2 id="breakdown">Where the time goes</h2>{_findings(analysis, anomalies=False)}'
        f"{_breakdown(analysis)}"
        + (f'<h2 id="gpu">GPUs over time</h2>{gpu}' if gpu else '<div id="gpu"></div>')
        + compare_html
        + _tables(analysis)
        + (f"<h2>Notes on the data</h2><ul>{problems}</ul>" if problems else "")
        + '<p class="muted">Generated by mrcdiag.</p></body></html>\n'
    )
