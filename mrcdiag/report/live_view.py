"""What `mrcdiag watch` shows: the live analysis's state (agent/live.live_state) drawn
for a terminal with rich, or as one plain line per refresh for logs and pipes."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

MAX_RANKS_SHOWN = 16
TREND_STEPS = 10  # steps at each end of the recent ones whose medians make the trend

_STYLE = {"critical": "bold red", "warning": "yellow", "info": "dim"}


def trend(recent_step_s: list[float]) -> float | None:
    """The step time's change over the recent steps, as a share (+0.12: 12% slower)."""
    values = [v for v in recent_step_s if v == v]  # not NaN
    if len(values) < 2 * TREND_STEPS:
        return None
    first = sorted(values[:TREND_STEPS])[TREND_STEPS // 2]
    last = sorted(values[-TREND_STEPS:])[TREND_STEPS // 2]
    return last / first - 1 if first > 0 else None


def _pace(state: dict[str, Any]) -> str:
    step_ms = 1e3 * (state.get("step_time_s") or 0.0)
    change = trend(state.get("recent_step_s") or [])
    arrow = ""
    if change is not None:
        arrow = f" ({'+' if change >= 0 else ''}{100 * change:.0f}% over the last steps)"
    return f"step {state.get('newest_step', 0)} · step time {step_ms:.1f} ms{arrow}"


def render(state: dict[str, Any], source: str) -> Group | Text:
    """The terminal view of one state."""
    if not state.get("analysing"):
        return Text(f"{source}: waiting for the job's ranks to attach ...", style="dim")
    head = Text(f"mrcdiag watch · {state.get('job') or source} · {_pace(state)}", style="bold")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("rank", "host", "late ms", "data wait ms", "collectives ms", "step ms"):
        table.add_column(name, justify="left" if name == "host" else "right")
    ranks = state.get("ranks") or []
    for r in ranks[:MAX_RANKS_SHOWN]:
        table.add_row(
            str(r["rank"]),
            r["host"],
            f"{1e3 * r['late_s']:.2f}",
            f"{1e3 * r['data_wait_s']:.2f}",
            f"{1e3 * r['collectives_s']:.2f}",
            f"{1e3 * r['step_s']:.2f}",
        )
    more = len(ranks) - MAX_RANKS_SHOWN
    parts: list[Any] = [head, table]
    if more > 0:
        parts.append(Text(f"... and {more} more ranks, less late", style="dim"))
    findings = state.get("findings") or []
    parts.append(Text("findings:" if findings else "no active findings", style="bold"))
    for f in findings:
        severity = f["finding"]["severity"]
        parts.append(Text("  " + f["line"].removeprefix("mrcdiag: "), style=_STYLE[severity]))
    return Group(*parts)


def render_line(state: dict[str, Any], source: str) -> str:
    """One line per refresh, for a log or a pipe."""
    if not state.get("analysing"):
        return f"{source}: waiting for the job's ranks to attach"
    ranks = state.get("ranks") or []
    late = ""
    if ranks:
        r = ranks[0]
        late = f" · most late: rank {r['rank']} ({r['host']}) {1e3 * r['late_s']:.2f} ms"
    findings = state.get("findings") or []
    said = "; ".join(f["line"].removeprefix("mrcdiag: ") for f in findings) or "no findings"
    return f"{_pace(state)}{late} · {said}"
