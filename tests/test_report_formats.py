"""The report's faces on a real 3-rank straggler run: terminal, JSON (schema), Perfetto,
HTML rendered in a real headless Chromium, and --compare against a clean run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
from conftest import demo_job, launch, mrcdiag

from mrcdiag.analyzers import analyze
from mrcdiag.report.text import render_text
from mrcdiag.store.reader import read_run

pytestmark = pytest.mark.slow
SCHEMA = Path(__file__).resolve().parent.parent / "mrcdiag" / "report" / "report.schema.json"
DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    slow = launch(
        root / "slow",
        3,
        demo_job("--steps", "60", "--work-ms", "10", "--slow-rank", "2", "--slow-ms", "25"),
    )
    clean = launch(root / "clean", 3, demo_job("--steps", "60", "--work-ms", "10"))
    assert slow.returncode == 0 and clean.returncode == 0, slow.stderr + clean.stderr
    return {"slow": root / "slow", "clean": root / "clean"}


def test_terminal_report_has_headline_and_straggler_block(runs: dict[str, Path]) -> None:
    proc = mrcdiag("report", str(runs["slow"]))
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert (
        lines[0].startswith("mrcdiag report  job demo_job") and "3 ranks on 1 node(s)" in lines[0]
    )
    assert any(line.startswith("Top causes: slow_compute on rank 2") for line in lines[:4])
    block = next(i for i, line in enumerate(lines) if "straggler · cause slow_compute" in line)
    assert "rank 2" in lines[block] and "lost" in lines[block]
    # the headline states what its evidence shows: the rank's own work is slower
    assert "rank 2 on" in lines[block + 1] and "holds its peers up" in lines[block + 1]
    assert "own work between collectives takes" in " ".join(lines[block + 1 : block + 3])
    # efficiency comes after the anomalies, in its own section
    assert lines.index("Where the time goes (steady steps)") > block
    assert max(len(line) for line in lines) <= 100


def test_no_color_means_no_escape_codes(runs: dict[str, Path], monkeypatch) -> None:
    analysis = analyze(read_run(runs["slow"]))
    assert "\x1b[" in render_text(analysis, color=True)  # colour exists when asked for
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert "\x1b[" not in render_text(analysis)


def test_json_report_matches_its_schema(runs: dict[str, Path]) -> None:
    report = json.loads(mrcdiag("report", str(runs["slow"]), "--format", "json").stdout)
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    assert report["findings"][0]["kind"] == "straggler" and report["findings"][0]["ranks"] == [2]


def test_perfetto_trace_is_valid_and_counts_match(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "trace.json"
    assert (
        mrcdiag("report", str(runs["slow"]), "--format", "perfetto", "-o", str(out)).returncode == 0
    )
    trace = json.loads(out.read_text())
    events = trace["traceEvents"]
    for e in events:
        assert e["ph"] in {"X", "M", "C"} and isinstance(e["pid"], int)
        assert isinstance(e["tid"], int)
        if e["ph"] != "M":
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        if e["ph"] == "X":
            assert e["dur"] >= 0 and e["name"]
    run = read_run(runs["slow"])
    slices = [e for e in events if e["ph"] == "X"]
    assert sum(e["cat"] == "collective" for e in slices) == int(
        (run.collectives["t_end_ns"] > 0).sum()
    )
    assert sum(e["cat"] == "step" for e in slices) == len(run.steps)
    assert {e["pid"] for e in slices} == {0, 1, 2}
    # microseconds: a step of ~35 ms lasts ~35000 units
    steps = sorted(e["dur"] for e in slices if e["cat"] == "step")
    assert 5_000 < steps[len(steps) // 2] < 500_000


def test_compare_names_what_changed(runs: dict[str, Path]) -> None:
    proc = mrcdiag("report", str(runs["slow"]), "--compare", str(runs["clean"]), "--format", "json")
    diff = json.loads(proc.stdout)["compare"]
    assert diff["step_time_p50_s"]["ratio"] > 1.3
    # Three ranks on two cores: the "clean" run's third rank is sometimes a small
    # straggler itself, so the slow run's straggler is either new or much worse.
    changed = diff["new_findings"] + diff["worse_findings"]
    assert [(f["kind"], f["ranks"]) for f in changed] == [("straggler", [2])]
    text = mrcdiag("report", str(runs["slow"]), "--compare", str(runs["clean"])).stdout
    assert "Compared with" in text
    assert re.search(r"(new|worse): straggler slow_compute ranks \[2\]", text)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    _chromium() is None, reason="chromium is not installed (apt-get install chromium)"
)
def test_html_renders_offline_in_headless_chromium(runs: dict[str, Path], tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    assert mrcdiag("report", str(runs["slow"]), "--format", "html", "-o", str(page)).returncode == 0
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "external reference"
    assert "<script" not in text
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--proxy-server=http://127.0.0.1:9",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,2000",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert shot.exists() and shot.stat().st_size > 20_000, proc.stderr[-2000:]
    console = [
        line
        for line in proc.stderr.splitlines()
        if "CONSOLE" in line or "Failed to load resource" in line or "ERR_PROXY" in line
    ]
    assert console == []
    DOCS.mkdir(exist_ok=True)
    if os.environ.get("MRCDIAG_UPDATE_DOCS"):
        shutil.copy(shot, DOCS / "report-straggler.png")
