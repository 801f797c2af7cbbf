"""The live analysis: the post-run analyzers, run every few seconds over the recent steps.

One process runs it for the whole job (the node agent beside global rank 0, see
README "Live diagnosis"). Each tick it folds in what the ranks wrote since the last one
(from this node's disk, or from the other nodes' agents), analyses the window of the
last `Settings.live_window_steps` steps that every rank has ended, and follows the
findings that warn (agent/tracker.py): each goes to /metrics (`LiveFindingsCollector`),
to one line on the launcher's stderr, and to `findings.jsonl` in the run directory.
A job-wide slowdown is found in the window by the post-run test, then held and followed
until the job's pace comes back (agent/pace.py): the window alone would forget it.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mrcdiag import metrics
from mrcdiag.agent.pace import RECENT_PACE_STEPS, PaceFollower
from mrcdiag.agent.tracker import (
    ENDED,
    STARTED,
    FindingTracker,
    LiveFinding,
    Transition,
    finding_key,
    shift_steps,
    worth_a_line,
)
from mrcdiag.analyzers import analyze
from mrcdiag.analyzers.common import job_step_time
from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.settings import DEFAULTS, Settings
from mrcdiag.analyzers.stopped import unexplained_slowdowns
from mrcdiag.log import warn_once
from mrcdiag.store.reader import samples_columns
from mrcdiag.store.records import RunMeta, WorldMeta
from mrcdiag.store.window import RankDelta, RunWindow, Window

# Ended findings stay on /metrics at 0 this long, so that a scrape sees them end
KEEP_ENDED_S = 300.0


class LiveAnalysis:
    """One job's live analysis. `read_new` returns what the ranks wrote since the last
    call; `tick()` runs one analysis and returns the transitions it caused."""

    def __init__(
        self,
        read_new: Callable[[], list[RankDelta]],
        job: str = "",
        settings: Settings = DEFAULTS,
        say: Callable[[str], None] | None = None,
        findings_file: Path | None = None,
        world: Callable[[], WorldMeta | None] | None = None,
        run: RunMeta | None = None,
        link_probe: Callable[[], list[dict]] | None = None,
        node_samples: Callable[[], dict[str, pa.Table]] | None = None,
        topology: Callable[[], dict[str, dict]] | None = None,
        clock: Callable[[], float] = time.time,
        on_hang: Callable[[LiveFinding], None] | None = None,
    ) -> None:
        self.read_new = read_new
        self.job = job
        self.settings = settings
        self.say = say
        self.findings_file = findings_file
        self.world = world
        self.link_probe = link_probe
        self.node_samples = node_samples
        self.topology = topology  # how each node's GPUs are wired, where it can be read
        self.clock = clock
        self.on_hang = on_hang  # called once when a hang is found (launch --on-hang)
        self.window = RunWindow(settings.live_window_steps)
        self.window.run = run
        self.tracker = FindingTracker(settings.live_end_after_s, settings.live_line_every_s)
        self.complete_steps = 0  # the job's steps that every rank has ended
        self.analysis_cpu_s = 0.0
        self.share_of_step: dict[str, float] = {}  # key -> time lost per step of the job
        self.latest: Window | None = None
        self.step_time_s: float = float("nan")  # the job's step time in the window
        self.recent_step_s: list[float] = []  # the job's last step times, oldest first
        self.rank_rows: list[RankNow] = []  # per rank in the window, most late first
        self.pace = PaceFollower(settings)  # the job's pace and the slowdown held on it
        self._lock = threading.Lock()

    # --- one tick ----------------------------------------------------------------------
    def tick(self) -> list[Transition]:
        started = time.thread_time()
        try:
            # an all-NaN column of a short window is expected here, not worth a warning
            with self._lock, warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return self._tick()
        finally:
            self.analysis_cpu_s += time.thread_time() - started

    def _tick(self) -> list[Transition]:
        self.window.add(self.read_new())
        if self.world is not None and self.window.world is None:
            self.window.world = self.world()
        if self.link_probe is not None and not self.window.link_probe:
            self.window.link_probe = self.link_probe()
        now = self.clock()
        w = self.window.window()
        if self.node_samples is not None and w.run.ranks:
            offset_of_host = {i.host: i.clock_offset_ns for i in w.run.ranks.values()}
            w.run.node_samples = {
                host: samples_columns(table, offset_of_host.get(host, 0))
                for host, table in self.node_samples().items()
            }
        if self.topology is not None and w.run.ranks:
            w.run.topology = self.topology()
        self.latest = w
        complete = w.first_step + w.complete_steps
        share = (complete - self.complete_steps) / max(1, w.complete_steps)
        self.complete_steps = max(self.complete_steps, complete)
        found: list[Finding] = []
        if w.run.ranks:
            settings = replace(
                self.settings, warmup_steps=max(0, self.settings.warmup_steps - w.first_step)
            )
            analysis = analyze(w.run, settings=settings, live_now_ns=self._aligned_now_ns(now))
            job = job_step_time(analysis.matrix.duration_s[:, : w.complete_steps])
            steady = job[settings.warmup_steps :]
            known = bool(np.isfinite(steady).any())
            job_time_s = float(np.nansum(steady)) if known else 0.0
            self.step_time_s = float(np.nanmedian(steady)) if known else 0.0
            for f in analysis.findings:
                if worth_a_line(f):
                    f = shift_steps(f, w.first_step)
                    found.append(f)
                    self._note_share(f, job_time_s)
            slowdowns = self.pace.update(analysis.matrix, w, job, settings)
            found += [f for f in unexplained_slowdowns(slowdowns, found) if worth_a_line(f)]
            self.rank_rows = _rank_rows(analysis.matrix, w, settings.warmup_steps)
            self.recent_step_s = [round(float(v), 6) for v in job[-RECENT_PACE_STEPS * 3 :]]
        transitions = self.tracker.update(found, now, max(0, complete - 1), min(1.0, share))
        for t in transitions:
            self._append(t)
        for t in transitions:
            if t.event == STARTED and t.live.finding.kind == "hang" and self.on_hang:
                self.on_hang(t.live)
        for t in self.tracker.lines_due(now):
            if self.say is not None:
                self.say(self.line(t))
        self.tracker.drop_ended(now - KEEP_ENDED_S)
        return transitions

    def finish(self) -> None:
        """The job has ended: one last look, then every finding still active ends with it
        (in findings.jsonl; a person was told what mattered while it ran)."""
        self.tick()
        with self._lock:
            for t in self.tracker.end_all(self.clock(), max(0, self.complete_steps - 1)):
                self._append(t)

    def _aligned_now_ns(self, now_unix_s: float) -> int:
        """The present on the run's aligned clock (rank 0's CLOCK_MONOTONIC), via the
        lowest rank's own clock and its offset to rank 0."""
        rank = min(self.window.ranks)
        meta = self.window.ranks[rank].meta
        return int(now_unix_s * 1e9) - meta.monotonic_to_unix_ns + meta.clock.offset_ns

    def _note_share(self, f: Finding, job_time_s: float) -> None:
        if job_time_s > 0 and f.kind != "hang":
            self.share_of_step[finding_key(f)] = f.time_lost_s / job_time_s

    # --- what it says ------------------------------------------------------------------
    def _append(self, t: Transition) -> None:
        if self.findings_file is None:
            return
        try:
            with open(self.findings_file, "a", encoding="utf-8") as f:
                f.write(json.dumps({"event": t.event, **t.live.as_json()}) + "\n")
        except OSError as exc:
            warn_once("findings-file", f"cannot append to {self.findings_file} ({exc})")

    def line(self, t: Transition) -> str:
        """One line for a person: what, where, why, and what it costs."""
        live = t.live
        f = live.finding
        who = _who(f)
        if t.event == ENDED:
            took = (live.ended_unix_s or 0) - live.started_unix_s
            return (
                f"mrcdiag: ended {f.kind} {who}: {f.cause}, after {took:.0f} s "
                f"(steps {live.started_step}-{live.ended_step}), "
                f"{live.time_lost_total_s:.1f} s lost"
            )
        head = f"mrcdiag: {f.severity.upper()} {f.kind} {who}: {f.cause}"
        share = self.share_of_step.get(live.key)
        if f.kind in ("hang",):
            return f"{head}: {f.summary}"
        if f.kind == "slowdown":
            before = f.evidence.get("step_time_before_ms")
            now_ms = f.evidence.get("step_time_now_ms")
            earlier = f.evidence.get("earlier_stages") or []
            first = (
                f" (slower since step {earlier[0]['start_step']}, "
                f"{earlier[0]['step_time_before_ms']:.0f} ms before)"
                if earlier
                else ""
            )
            return (
                f"{head}, step time {before:.0f} ms -> {now_ms:.0f} ms since step "
                f"{live.started_step}{first}"
            )
        if share is not None:
            return f"{head}, {100 * share:.0f}% of each step lost since step {live.started_step}"
        return f"{head} since step {live.started_step}"

    def active(self) -> list[LiveFinding]:
        return [live for live in self.tracker.findings.values() if live.active]


@dataclass(frozen=True)
class RankNow:
    """One rank over the window: medians per step."""

    rank: int
    host: str
    late_s: float  # behind the others' median arrival
    data_wait_s: float
    collectives_s: float  # blocked in collectives
    step_s: float

    def as_json(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _rank_rows(m: Any, w: Window, warmup: int) -> list[RankNow]:
    cols = slice(warmup, w.complete_steps)
    with np.errstate(all="ignore"):
        medians = [
            np.nan_to_num(np.nanmedian(a[:, cols], axis=1)) if a[:, cols].size else
            np.zeros(len(m.ranks))
            for a in (m.late_s, m.data_wait_s, m.blocked_s, m.duration_s)
        ]  # fmt: skip
    rows = [
        RankNow(int(rank), w.run.host_of(int(rank)), *(float(v[i]) for v in medians))
        for i, rank in enumerate(m.ranks)
    ]
    return sorted(rows, key=lambda r: -r.late_s)


def live_state(live: LiveAnalysis | None) -> dict[str, Any]:
    """What `mrcdiag watch` shows, as JSON (the agent's /mrcdiag/live)."""
    if live is None:
        return {"analysing": False}
    return {
        "analysing": True,
        "job": live.job,
        "newest_step": max(0, live.complete_steps - 1),
        "step_time_s": live.step_time_s,
        "recent_step_s": live.recent_step_s,
        "ranks": [r.as_json() for r in live.rank_rows],
        "findings": [
            {**x.as_json(), "line": live.line(Transition(STARTED, x))} for x in live.active()
        ],
        "analysis_cpu_s": round(live.analysis_cpu_s, 3),
    }


def _who(f: Finding) -> str:
    if f.kind == "slowdown":
        return "(every rank)"
    if f.ranks and len(f.ranks) <= 8:
        ranks = ", ".join(map(str, f.ranks))
        where = f" (host {', '.join(f.nodes)})" if f.nodes else ""
        return f"rank {ranks}{where}"
    if f.nodes:
        return f"node {', '.join(f.nodes)}"
    return f"{len(f.ranks)} ranks"


class LiveFindingsCollector:
    """/metrics for the live findings: one series per active finding and blamed rank
    (rank "" for node-, link- or job-level ones); ended ones at 0 until dropped."""

    def __init__(self, live: LiveAnalysis, job: str) -> None:
        self.live = live
        self.job = job

    def collect(self) -> Iterator[Metric]:
        labels = [metrics.JOB, metrics.KIND, metrics.CAUSE, metrics.SEVERITY]
        active = GaugeMetricFamily(
            metrics.FINDING_ACTIVE,
            "1 while a live finding is active (0 for a while after it ended)",
            labels=labels + [metrics.RANK, metrics.NODE],
        )
        lost = CounterMetricFamily(
            metrics.FINDING_TIME_LOST.removesuffix("_total"),
            "What the job would have saved without the finding's cause, so far",
            labels=[metrics.JOB, metrics.KIND, metrics.CAUSE, metrics.RANK, metrics.NODE],
        )
        for live in list(self.live.tracker.findings.values()):
            f = live.finding
            for rank, node in _series_of(f, self.live):
                active.add_metric(
                    [self.job, f.kind, f.cause, f.severity, rank, node], float(live.active)
                )
                lost.add_metric([self.job, f.kind, f.cause, rank, node], live.time_lost_total_s)
        yield active
        yield lost
        yield CounterMetricFamily(
            metrics.LIVE_ANALYSIS_SECONDS.removesuffix("_total"),
            "CPU time the live analysis has used",
            value=self.live.analysis_cpu_s,
        )
        yield GaugeMetricFamily(
            metrics.LIVE_NEWEST_STEP,
            "The newest step every rank has ended",
            value=max(0, self.live.complete_steps - 1),
        )

    def describe(self) -> list[Metric]:
        return []


def _series_of(f: Finding, live: LiveAnalysis) -> list[tuple[str, str]]:
    """(rank, node) label pairs of a finding: its blamed ranks, or its nodes."""
    if f.kind == "slowdown" or not f.ranks:
        return [("", node) for node in f.nodes] or [("", "")]
    window = live.latest
    out = []
    for rank in f.ranks:
        host = window.run.host_of(rank) if window is not None else "?"
        out.append((str(rank), "" if host == "?" else host))
    return out
