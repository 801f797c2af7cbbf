"""The terminal report: the answer first, the evidence below it, tables last."""

from __future__ import annotations

import io
import os
import sys

from rich import box
from rich.console import Console
from rich.table import Table

from mrcdiag.analyzers import Analysis
from mrcdiag.analyzers.findings import Finding
from mrcdiag.report.capture import capture_line

WIDTH = 100
_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def render_text(analysis: Analysis, color: bool | None = None) -> str:
    if color is None:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=WIDTH,
        force_terminal=color,
        no_color=not color,
        highlight=False,
        emoji=False,
    )
    _headline(console, analysis)
    anomalies = [f for f in analysis.findings if f.is_anomaly]
    for number, finding in enumerate(anomalies, 1):
        _finding(console, number, finding)
    _where_time_goes(console, analysis, len(anomalies))
    _tables(console, analysis)
    _problems(console, analysis)
    return buffer.getvalue()


def _headline(console: Console, analysis: Analysis) -> None:
    run, s = analysis.run, analysis.summary
    job = (run.run.job if run.run else "") or "?"
    console.print(
        f"[bold]mrcdiag report[/bold]  job [bold]{job}[/bold]  ·  {run.world_size} ranks on "
        f"{len(run.hosts)} node(s)  ·  {s.steps} steps  ·  {s.duration_s:.1f} s"
    )
    if s.step_time_p50_s is not None:
        best = min((r.step_time_p50_s for r in s.per_rank), default=s.step_time_p50_s)
        console.print(
            f"step time p50 {_fmt_s(s.step_time_p50_s)}, p90 {_fmt_s(s.step_time_p90_s)}"
            f"  ·  communication {100 * (s.comm_fraction or 0):.0f}% of step"
            f"  ·  data wait {100 * (s.data_wait_fraction or 0):.0f}%"
            + (f"  ·  fastest rank p50 {_fmt_s(best)}" if best < s.step_time_p50_s * 0.97 else "")
        )
    serious = [f for f in analysis.findings if f.severity != "info"]
    if not serious:
        console.print("[green]No problem found[/green]: no finding of severity warning or above.")
    else:
        causes = ", ".join(f"{_cause_where(f)} ({_fmt_s(f.time_lost_s)} lost)" for f in serious[:3])
        console.print(f"[bold]Top causes:[/bold] {causes}")
    console.print()


def _cause_where(f: Finding) -> str:
    """ "slow_compute on rank 1", "slow_node on node b": a cause with where it is."""
    if f.ranks and len(f.ranks) <= 4 and f.cause != "slow_node":
        return f"{f.cause} on rank {', '.join(map(str, f.ranks))}"
    if f.nodes:
        return f"{f.cause} on node {', '.join(f.nodes[:2])}"
    return f.cause


def _where_time_goes(console: Console, analysis: Analysis, numbered: int) -> None:
    """Efficiency: the split of step time, for the job and the ranks that differ most,
    and the efficiency findings (info: the workload's shape, not a fault)."""
    split = analysis.summary.time_split
    if not split:
        return
    console.print("[bold]Where the time goes[/bold] (steady steps)")
    total = sum(r.step_time_s for r in split) or 1.0

    def shares(parts: tuple[float, float, float, float], whole: float) -> str:
        names = ("compute", "data wait", "exposed communication", "waiting for peers")
        return ", ".join(f"{n} {100 * p / whole:.0f}%" for n, p in zip(names, parts, strict=True))

    job = (
        sum(r.compute_s for r in split),
        sum(r.data_wait_s for r in split),
        sum(r.exposed_comm_s for r in split),
        sum(r.waiting_s for r in split),
    )
    console.print(f"   job: {shares(job, total)}")
    by_wait = sorted(split, key=lambda r: r.waiting_s / max(r.step_time_s, 1e-12))
    shown = by_wait if len(by_wait) <= 4 else by_wait[:2] + by_wait[-2:]
    for r in shown:
        parts = (r.compute_s, r.data_wait_s, r.exposed_comm_s, r.waiting_s)
        console.print(f"   rank {r.rank}: {shares(parts, max(r.step_time_s, 1e-12))}")
    for f in analysis.findings:
        if not f.is_anomaly:
            console.print(f"   [cyan]·[/cyan] {f.summary} [dim]({f.kind} · {f.cause})[/dim]")
            if f.recommendation:
                console.print(f"     [bold]→[/bold] {f.recommendation}")
    console.print()


def _finding(console: Console, number: int, f: Finding) -> None:
    style = _SEVERITY_STYLE.get(f.severity, "")
    where = []
    if f.ranks:
        where.append("rank " + ", ".join(map(str, f.ranks[:8])) + ("…" if len(f.ranks) > 8 else ""))
    if f.nodes:
        where.append("node " + ", ".join(f.nodes[:4]))
    console.print(
        f"[{style}]{number}. {f.severity.upper()}[/{style}] [bold]{f.kind}[/bold] · "
        f"cause [bold]{f.cause}[/bold] · {' · '.join(where)} · {_fmt_s(f.time_lost_s)} lost"
    )
    if f.summary:
        console.print(f"   {f.summary}")
    for key, value in list(f.evidence.items())[:8]:
        text = value if isinstance(value, str) else _short(value)
        console.print(f"   [dim]{key}:[/dim] {text}")
    if f.recommendation:
        console.print(f"   [bold]→[/bold] {f.recommendation}")
    console.print()


def _short(value: object, limit: int = 88) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _tables(console: Console, analysis: Analysis) -> None:
    s = analysis.summary
    table_box = box.SIMPLE_HEAD
    if s.per_rank:
        ranks = Table(title="Step time per rank", box=table_box, title_justify="left")
        memory = any(r.memory_peak_of_total is not None for r in s.per_rank)
        columns = ["rank", "node", "steps", "p50", "p90", "data wait", "in collectives"]
        for col in columns + (["GPU memory peak"] if memory else []):
            ranks.add_column(col, justify="right" if col not in ("node",) else "left")
        rows = s.per_rank
        if len(rows) > 16:  # the slowest and the fastest say it all
            ordered = sorted(rows, key=lambda r: -r.step_time_p50_s)
            rows = ordered[:8] + ordered[-4:]
        for r in rows:
            ranks.add_row(
                str(r.rank),
                r.host,
                str(r.steps),
                _fmt_s(r.step_time_p50_s),
                _fmt_s(r.step_time_p90_s),
                f"{100 * r.data_wait_fraction:.0f}%",
                f"{100 * r.comm_fraction:.0f}%",
                *([_share(r.memory_peak_of_total)] if memory else []),
            )
        console.print(ranks)
    if s.per_op:
        table = Table(title="Collectives", box=table_box, title_justify="left")
        for col in ("op", "group", "calls", "bytes", "time/rank", "waiting", "busbw p50"):
            table.add_column(col, justify="left" if col == "op" else "right")
        for o in s.per_op[:12]:
            table.add_row(
                o.op,
                o.group,
                str(o.calls),
                _fmt_bytes(o.bytes_total),
                _fmt_s(o.time_total_s),
                _fmt_s(o.wait_total_s),
                f"{o.busbw_median_gbps:.2f} GB/s" if o.busbw_median_gbps is not None else "-",
            )
        console.print(table)
    if s.per_peer:
        peers = Table(title="Point-to-point", box=table_box, title_justify="left")
        for col in ("from → to", "sends", "receives", "bytes", "in send", "in receive"):
            peers.add_column(col, justify="left" if col == "from → to" else "right")
        for p in s.per_peer[:16]:
            peers.add_row(
                f"{p.sender} → {p.receiver}",
                str(p.sends),
                str(p.receives),
                _fmt_bytes(p.bytes_total),
                _fmt_s(p.send_time_s),
                _fmt_s(p.receive_time_s),
            )
        console.print(peers)
    console.print(capture_line(s.coverage))


def _problems(console: Console, analysis: Analysis) -> None:
    notes = analysis.notes
    if notes:
        console.print("[bold]Notes on the data[/bold]")
        for note in notes[:20]:
            console.print(f"  - {note}")
        if len(notes) > 20:
            console.print(f"  - … and {len(notes) - 20} more")
