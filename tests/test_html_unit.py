"""The HTML report on hand-made runs: GPU plots appear when GPU samples exist, big runs
are binned, and nothing points outside the file."""

from __future__ import annotations

import re

from handmade import lockstep, node_samples

from mrcdiag.analyzers import analyze
from mrcdiag.report.html import MAX_COLS, MAX_ROWS, render_html


def test_gpu_samples_are_plotted_over_time() -> None:
    run = lockstep(2, 30)
    rows = [
        (t * 10**9, "mrcdiag_gpu_utilization_ratio", f"gpu={g}", 0.5 + 0.1 * g)
        for t in range(10)
        for g in range(2)
    ]
    run.node_samples["h0"] = node_samples(rows)
    page = render_html(analyze(run))
    assert '<h2 id="gpu">GPUs over time</h2>' in page
    assert page.count("<polyline") == 2


def test_large_run_is_binned_and_self_contained() -> None:
    run = lockstep(300, 400, noise_ms=0.5)
    page = render_html(analyze(run))
    assert page.count("<rect") <= 2 * MAX_ROWS * MAX_COLS + 4 * 64
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page
