"""Rendering what the analysis produced: terminal text, JSON, HTML, Perfetto. Renderers
only render: every number they show was computed by mrcdiag/analyzers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mrcdiag.analyzers import Analysis
    from mrcdiag.analyzers.compare import Comparison

FORMATS = ("text", "json", "html", "perfetto")


def render(
    analysis: Analysis, fmt: str, diff: Comparison | None = None, color: bool | None = None
) -> str:
    """The report in `fmt` (one of FORMATS); `color` for text (None: when a terminal)."""
    if fmt == "json":
        from mrcdiag.report.json_report import render_json

        return render_json(analysis, diff)
    if fmt == "html":
        from mrcdiag.report.html import render_html

        return render_html(analysis, diff)
    if fmt == "perfetto":
        from mrcdiag.report.perfetto import render_perfetto

        return render_perfetto(analysis)
    from mrcdiag.report.text import render_text

    text = render_text(analysis, color=color)
    if diff is not None:
        from mrcdiag.report.compare import render_compare_text

        text += "\n" + render_compare_text(diff)
    return text
