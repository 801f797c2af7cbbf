"""Stragglers: ranks (or whole nodes) that everyone else keeps waiting for, and why.

A rank is a straggler when, over a window of steady steps, its own work between
collectives (from its last completion to its next arrival) takes longer than its peers'
in at least three steps out of four and by at least 1% of the step time (and, with five
ranks or more, by far more than the ranks' own spread: median/MAD). A rank that arrives
late only because its previous collective ended late for it is left to the interconnect
analyzer. Warm-up steps are left out, and one-off hiccups do not move a median. The time
lost is a what-if: how much earlier each collective would have started had this rank
arrived with the others (its excess over the last of its peers, as far as its own work
explains it), summed over steps.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np

from mrcdiag.analyzers.common import (
    binomial_tail,
    job_step_time,
    nan_median_rows,
    robust_sigma,
    steady_columns,
    windows,
)
from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.gpus import gpu_of
from mrcdiag.analyzers.instances import Instances, median_by
from mrcdiag.analyzers.lateness import RankStepMatrix
from mrcdiag.analyzers.recurrence import step_pattern
from mrcdiag.analyzers.settings import Settings
from mrcdiag.analyzers.thread_time import cells, thread_time
from mrcdiag.metrics import (
    GPU_CLOCK_EVENT_ACTIVE,
    RANK_CPU,
    RANK_CPU_WAIT,
    THROTTLE_REASONS,
)
from mrcdiag.store.reader import RunData, series
from mrcdiag.store.samples import parse_labels


def find_stragglers(
    run: RunData, inst: Instances, m: RankStepMatrix, settings: Settings
) -> list[Finding]:
    cols = steady_columns(m.duration_s.shape[1], settings.warmup_steps)
    if len(cols) < 3 or len(m.ranks) < 2:
        return []
    m = replace(m, own_late_s=_own_work_lateness(run, m, settings))
    job_time = job_step_time(m.duration_s[:, cols])
    step_s = float(np.nanmedian(job_time)) if np.isfinite(job_time).any() else 0.0
    if step_s <= 0:
        return []
    run_s = float(np.nansum(job_time))
    uncertainty = max((i.clock_uncertainty_ns or 0) for i in run.ranks.values()) / 1e9
    floor = max(
        settings.min_lateness_of_step_ratio * step_s,
        settings.clock_uncertainty_factor * uncertainty if _cross_host(run) else 0,
        settings.min_lateness_s,
    )
    all_windows = windows(cols, settings.window_min_steps, settings.windows_per_run)
    flagged: dict[int, set[int]] = {}  # row -> indices of the windows in which it straggled
    behind_by_window, median_by_window = [], []
    for index, window in enumerate(all_windows):
        late = m.own_late_s[:, window]  # arriving late only because a link delivered
        # to this rank last is the link's finding (interconnect), not a straggler
        arrival = m.late_s[:, window]
        with warnings.catch_warnings():  # ranks outside every group have all-NaN rows
            warnings.simplefilter("ignore", RuntimeWarning)
            med = nan_median_rows(late)
            behind = np.nanmean(np.where(np.isnan(late), np.nan, late > 0), axis=1)
            # the others must wait for it: its arrivals are late too, not only its work
            arrives_late = nan_median_rows(arrival) > 0
        behind_by_window.append(behind)
        median_by_window.append(med)
        candidate = (med >= floor) & (behind >= settings.persistence_ratio) & arrives_late
        centre, spread = _peers_spread(med, candidate)
        for row in np.flatnonzero(candidate & (med - centre > settings.outlier_sigmas * spread)):
            flagged.setdefault(int(row), set()).add(index)
    n_windows = len(all_windows)
    needed = 1 if n_windows <= 2 else 2
    rows: dict[int, np.ndarray] = {}
    for row, found in flagged.items():
        # a window behind by a sliver, far from where the rank is really slow, is chance
        strongest = max(median_by_window[i][row] for i in found)
        found = {
            i
            for i in found
            if median_by_window[i][row] >= settings.span_edge_lateness_ratio * strongest
        }
        if len(found) < needed:
            continue
        # A span's edges: a neighbouring window where it is still behind in most steps,
        # by a good part of its lateness in the span, belongs to the span (a slowdown that
        # starts mid-window is behind in 60-70% of that window's steps).
        edge_floor = max(
            floor,
            settings.span_edge_lateness_ratio
            * float(np.median([median_by_window[i][row] for i in found])),
        )
        grown = True
        while grown:
            grown = False
            for index in range(n_windows):
                if index in found or not ({index - 1, index + 1} & found):
                    continue
                if (
                    behind_by_window[index][row] >= settings.span_edge_ratio
                    and median_by_window[index][row] >= edge_floor
                ):
                    found.add(index)
                    grown = True
        steps = np.concatenate([all_windows[i] for i in sorted(found)])
        if _beyond_chance(m, row, steps, settings):
            rows[row] = steps
    findings = _slow_nodes(run, inst, m, rows, cols, step_s, run_s, settings) if rows else []
    in_node = {r for f in findings for r in f.ranks}
    lasting = set(rows)
    for row, steps in rows.items():
        if _is_episode(m, row, steps, settings):
            # judged as an episode over the whole run, not only over the windows in
            # which its stalls happened to lift the median
            lasting.discard(row)
        elif int(m.ranks[row]) not in in_node:
            findings.append(_rank_finding(run, m, row, steps, cols, step_s, run_s, settings))
    findings += _episodic(run, m, lasting, cols, floor, step_s, run_s, settings)
    return [_where_waited(run, inst, f) for f in _host_contention(run, m, findings, settings)]


def _peers_spread(med: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(centre, robust sigma) of the ranks' median lateness in a window, against which a
    candidate must stand out (with five ranks or more; (0, 0) below). Measured on the
    ranks that are not candidates where three or more are left: the slow ranks
    themselves must not widen the yardstick (both ranks of a slow node among six made
    the MAD of all six 6 ms, and 20 ms of lateness less than six of them)."""
    if len(med) < 5:
        return 0.0, 0.0
    peers = med[~candidate & ~np.isnan(med)]
    basis = peers if len(peers) >= 3 else med
    return float(np.nanmedian(basis)), robust_sigma(basis)


def _where_waited(run: RunData, inst: Instances, finding: Finding) -> Finding:
    """Name the process groups in which the others waited for a straggling rank: with
    several groups (data x tensor parallel, pipeline stages) its lateness shows only in
    the groups it belongs to, and that is where to look."""
    if len(finding.ranks) != 1 or "straggling_steps" not in finding.evidence:
        return finding
    rank = finding.ranks[0]
    first, last = map(int, str(finding.evidence["straggling_steps"]).split("-"))
    held = (inst.last_rank == rank) & (inst.step >= first) & (inst.step <= last)
    held &= inst.n_arrived >= 2
    if not held.any():
        return finding
    ids, counts = np.unique(inst.group[held], return_counts=True)
    labels = {
        (run.groups[int(g)].label if int(g) < len(run.groups) else f"group {int(g)}"): int(n)
        for g, n in sorted(zip(ids, counts, strict=True), key=lambda gn: -gn[1])
    }
    named = ", ".join(list(labels)[:3])
    return replace(
        finding,
        evidence={**finding.evidence, "others_waited_in_groups": labels},
        summary=f"{finding.summary}; the others waited for it in {named}",
    )


def _step_cost(m: RankStepMatrix, row: int, steps: np.ndarray) -> np.ndarray:
    """Per step, how much sooner the step would have gone on had this rank arrived with
    the others (its excess over the last of them, as far as its own work explains it)."""
    cost = np.minimum(m.excess_s[row, steps], np.maximum(m.own_late_s[row, steps], 0))
    cost[np.isnan(cost)] = 0.0
    return cost


def _episodic(
    run: RunData,
    m: RankStepMatrix,
    persistent_rows: set[int],
    cols: np.ndarray,
    floor: float,
    step_s: float,
    run_s: float,
    settings: Settings,
) -> list[Finding]:
    """Stragglers that a median over steps does not see: a rank that stalls every N steps
    (a checkpoint, a log flush, garbage collection), is stopped from outside now and then
    (a hypervisor, a co-tenant, SIGSTOP), or is slow for a short span. Found by what they
    cost: the what-if saving summed over the steps it held the others up, far above any
    other rank's (the jitter of a shared machine falls on every rank alike)."""
    if len(m.ranks) < 2:
        return []
    costs = np.array([_step_cost(m, row, cols) for row in range(len(m.ranks))])
    totals = costs.sum(axis=1)
    out = []
    for row in np.argsort(-totals):
        if row in persistent_rows or totals[row] <= 0:
            continue
        others = np.delete(totals, row)
        hits = cols[holding_up(costs[row], floor)]
        if (
            totals[row] < settings.episodic_min_lost_of_run_ratio * run_s
            or totals[row] < settings.episodic_concentration * float(np.max(others))
            or len(hits) < settings.episodic_min_events
        ):
            continue
        pattern = step_pattern(hits, _step_cost(m, int(row), hits))
        if pattern["pattern"] == "span":  # stray hits around it, if any, are jitter
            first, last = map(int, str(pattern["steps"]).split("-"))
            hits = hits[(hits >= first) & (hits <= last)]
        span = cols[(cols >= hits.min()) & (cols <= hits.max())]
        if pattern["pattern"] == "span" and not _beyond_chance(m, int(row), span, settings):
            continue
        out.append(_rank_finding(run, m, int(row), hits, cols, step_s, run_s, settings, pattern))
    return out


def _beyond_chance(m: RankStepMatrix, row: int, steps: np.ndarray, settings: Settings) -> bool:
    """A rank behind its peers through `steps` in more of them than chance gives: each
    rank is behind the others' median in half the steps of a clean job, so behind in 8
    of 9 happens 2% of the time (a clean 12-step Trainer run did), in 10 of 10 0.1%."""
    late = m.own_late_s[row, steps]
    late = late[~np.isnan(late)]
    return binomial_tail(len(late), int((late > 0).sum()), 0.5) <= settings.lasting_chance


def _contended_hosts(run: RunData, settings: Settings) -> dict[str, dict[int, float]]:
    """Hosts of two ranks or more on which every rank waits for a CPU (the node agents'
    run-queue wait of each rank's process): host -> {rank: its wait in s/s}."""
    waits = counter_rates(run, RANK_CPU_WAIT)
    by_host: dict[str, list[int]] = {}
    for rank in sorted(run.ranks):
        by_host.setdefault(run.host_of(rank), []).append(rank)
    return {
        host: {r: waits[r] for r in ranks}
        for host, ranks in sorted(by_host.items())
        if len(ranks) >= 2
        and all(waits.get(r, 0.0) >= settings.cpu_wait_excess_s_per_s for r in ranks)
    }


def _own_work_lateness(run: RunData, m: RankStepMatrix, settings: Settings) -> np.ndarray:
    """The lateness of each rank's own work, per step. Its time from its last completion
    to its next arrival against its peers' (m.own_late_s), except on a host where every
    rank waits for a CPU: there one rank that computes more takes CPU from the others,
    whose time between collectives stretches as much as its own (4 ranks on 2 cores, one
    with 30 ms more compute a step: its arrivals 25 ms late, its own-work lateness 0).
    There a step's arrival lateness counts as the rank's own as far as the extra CPU time
    of its stepping thread in that step explains it."""
    own = m.own_late_s
    if m.cpu_s is None:
        return own
    contended = _contended_hosts(run, settings)
    rows = [i for i, r in enumerate(m.ranks) if run.host_of(int(r)) in contended]
    if not rows:
        return own
    out = own.copy()
    for i in rows:
        others = np.arange(len(m.ranks)) != i
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # steps no other rank timed
            extra_cpu = m.cpu_s[i] - np.nanmedian(m.cpu_s[others], axis=0)
        explained = np.minimum(m.late_s[i], extra_cpu)  # NaN where the CPU is not known
        out[i] = np.where(np.isnan(own[i]), own[i], np.fmax(own[i], explained))
    return out


def _host_contention(
    run: RunData, m: RankStepMatrix, findings: list[Finding], settings: Settings
) -> list[Finding]:
    """Where every rank of a host waits for a CPU (more ranks and threads than cores, a
    noisy neighbour on the whole host), say so once for the host: a rank there that
    straggles for no other measured reason is not at fault itself."""
    out = list(findings)
    for host, waits in _contended_hosts(run, settings).items():
        ranks, rates = list(waits), list(waits.values())
        # A rank of such a host that straggles because it waited for a CPU (or for no
        # measured reason), and costs less than a tenth of the run, is that scheduling;
        # one that costs more (stopped from outside, say) stays a finding of its own.
        run_s = _steady_run_s(m, settings)
        folded = [
            f
            for f in out
            if f.kind == "straggler"
            # an unknown cause where the thread's own clocks were recorded means it was
            # off the CPU without waiting for one: not this host's contention
            and (
                f.cause == "host_contention"
                or (f.cause == "unknown" and "step_cpu_ms" not in f.evidence)
            )
            and set(f.ranks) <= set(ranks)
            and f.time_lost_s < settings.contended_host_fold_lost_ratio * run_s
        ]
        out = [f for f in out if f not in folded]
        out.append(
            Finding(
                kind="straggler",
                severity="info",
                cause="host_contention",
                time_lost_s=float(sum(f.time_lost_s for f in folded)),
                ranks=tuple(sorted(ranks)),
                nodes=(host,),
                summary=f"every rank on {host} waits for a CPU ({min(rates):.2f}-"
                f"{max(rates):.2f} s per second): more ranks and threads than cores, or "
                "another tenant; lateness on this host is its scheduling, not one rank's "
                "fault"
                + (
                    f" (ranks {', '.join(str(r) for f in folded for r in f.ranks)} were "
                    "behind now and then)"
                    if folded
                    else ""
                ),
                evidence={
                    "cpu_wait_s_per_s": {
                        str(r): round(w, 3) for r, w in zip(ranks, rates, strict=True)
                    }
                },
                recommendation="give each rank its own cores (fewer ranks per node, "
                "OMP_NUM_THREADS, taskset/numactl), or move other work off this host",
            )
        )
    return out


def holding_up(cost: np.ndarray, floor: float) -> np.ndarray:
    """The steps that make up a rank's cost: the fewest that hold 80% of it, and any as
    large as half the least of those (timer noise elsewhere does not count as a step)."""
    order = np.argsort(-cost)
    cumulative = np.cumsum(cost[order])
    if len(cost) == 0 or cumulative[-1] <= 0:
        return np.zeros(len(cost), dtype=bool)
    core = order[: int(np.searchsorted(cumulative, 0.8 * cumulative[-1])) + 1]
    return cost >= max(floor, 0.5 * float(cost[core].min()))


def _steady_run_s(m: RankStepMatrix, settings: Settings) -> float:
    """The steady steps' duration, from the ranks' step records."""
    cut = steady_columns(len(m.spans.first_start_ns), settings.warmup_steps)
    span = m.spans.span_ns(cut)
    return 0.0 if span is None else float((span[1] - span[0]) / 1e9)


def _cross_host(run: RunData) -> bool:
    return any(i.clock_method == "ping_pong" for i in run.ranks.values())


def straggler_severity(
    settings: Settings,
    late_s: float,
    lost_s: float,
    step_s: float,
    run_s: float,
    share_of_run: float = 1.0,
    pattern: dict[str, object] | None = None,
) -> str:
    """critical: costs a fifth of the run; warning: costs 2% of it, or (a lasting one)
    late by 3% of a step through at least half of it (a rank 5% slower among a thousand
    costs the job little, the others' own jitter hides most of it, yet it is a rank to go
    and see). Never for a rank less than a millisecond behind: that is the scheduling of
    a shared host (a clean Lightning job on 2 cores had one rank 0.3 ms behind in every
    2.8 ms step), not a rank to go and see, nor for one that cost the job less than
    `min_warning_lost_s` in all, whatever its share of a short run. An episode
    (`pattern`) that neither lasts nor costs stays info, and so do hiccups now and then
    that are small against a step (a busy process's jitter: rank 0 drawing a progress
    bar) unless they cost a fifth."""
    if late_s < settings.min_persistent_lateness_s or lost_s < settings.min_warning_lost_s:
        return "info"
    lost_share = lost_s / run_s if run_s > 0 else 0.0
    if lost_share >= settings.critical_lost_of_run_ratio:
        return "critical"
    if (
        pattern is not None
        and pattern["pattern"] == "intermittent"
        and late_s < settings.intermittent_min_lateness_of_step_ratio * step_s
    ):
        return "info"
    persistent = (
        pattern is None
        and late_s / step_s >= settings.warning_lateness_of_step_ratio
        and share_of_run >= settings.min_share_of_run_to_warn_ratio
    )
    if lost_share >= settings.warning_lost_of_run_ratio or persistent:
        return "warning"
    return "info"


def _is_episode(m: RankStepMatrix, row: int, steps: np.ndarray, settings: Settings) -> bool:
    """A lasting lateness whose cost sits in a minority of its steps (a stall every N
    steps on a rank that is also a little behind in the others) is an episode, but not a
    rank late by as much in every step, whose cost only shows where the others' jitter
    does not hide it (one slow rank among many)."""
    cost = _step_cost(m, row, steps)
    held = holding_up(cost, settings.min_lateness_s)
    hits = steps[held]
    quiet = float(np.nanmedian(m.own_late_s[row, steps[~held]])) if (~held).any() else 0.0
    loud = float(np.nanmedian(m.own_late_s[row, hits])) if len(hits) else 0.0
    return (
        0 < len(hits) < settings.episodic_share_of_span_ratio * len(steps)
        and quiet < settings.episodic_quiet_ratio * loud
    )


def _rank_finding(
    run: RunData,
    m: RankStepMatrix,
    row: int,
    steps: np.ndarray,
    cols: np.ndarray,
    step_s: float,
    run_s: float,
    settings: Settings,
    pattern: dict[str, object] | None = None,
) -> Finding:
    rank = int(m.ranks[row])
    cost = _step_cost(m, row, steps)
    late_s = float(np.nanmedian(m.own_late_s[row, steps]))
    # every step it held the others up counts: a stall on a rank that is also behind in
    # every step is its cost too (a trimmed mean cut it out), and in a step where a peer
    # was later still it cost nothing
    lost_s = float(cost.sum())
    others = np.arange(len(m.ranks)) != row
    evidence: dict[str, object] = {
        "median_own_work_lateness_ms": round(late_s * 1e3, 3),
        "median_arrival_lateness_ms": round(float(np.nanmedian(m.late_s[row, steps])) * 1e3, 3),
        "steps_behind_peers": f"{100 * np.nanmean(m.own_late_s[row, steps] > 0):.0f}%",
        "job_step_time_ms": round(step_s * 1e3, 3),
        "straggling_steps": f"{int(steps.min())}-{int(steps.max())}",
    }
    between = ""
    if pattern is None:
        # a rank behind in every step that also stalls every N steps: say so
        spike = cost >= max(
            settings.min_persistent_lateness_s,
            settings.stall_of_typical_ratio * float(np.median(cost)),
        )
        spikes = steps[spike]
        rhythm = step_pattern(spikes, cost[spike])
        if len(spikes) >= settings.episodic_min_events and rhythm["pattern"] == "periodic":
            each_s = float(np.median(cost[spike]))
            evidence["stalls_every_steps"] = rhythm["every_steps"]
            evidence["stall_ms"] = round(each_s * 1e3, 3)
            between = (
                f", and stalls every {rhythm['every_steps']} steps ({len(spikes)} times, "
                f"{each_s * 1e3:.1f} ms each time)"
            )
    else:
        evidence.update(pattern)
        # a rank that stalls every N steps and is also behind in every other step: that
        # lateness is its cost too, where it is beyond the others' jitter
        rest = np.setdiff1d(cols, steps)
        behind_s = float(np.nanmedian(m.own_late_s[row, rest])) if len(rest) else 0.0
        if behind_s >= settings.min_persistent_lateness_s and _beyond_chance(
            m, row, rest, settings
        ):
            lost_s += float(_step_cost(m, row, rest).sum())
            evidence["behind_in_other_steps_ms"] = round(behind_s * 1e3, 3)
            between = f", and {behind_s * 1e3:.1f} ms behind in the other steps"
    # late now and then: each stall's work may begin in the step before the one where
    # the others waited for it
    now_and_then = pattern is not None and pattern["pattern"] != "span"
    cause, detail, advice = lateness_cause(
        run, m, row, others, steps, late_s, step_s, evidence, settings, now_and_then
    )
    host = run.host_of(rank)
    share = len(steps) / len(cols)
    # an episode is judged by what it cost alone
    severity = straggler_severity(settings, late_s, lost_s, step_s, run_s, share, pattern)
    return Finding(
        kind="straggler",
        severity=severity,
        cause=cause,
        time_lost_s=lost_s,
        ranks=(rank,),
        nodes=(host,),
        summary=_summary(rank, host, late_s, step_s, steps, cols, pattern) + between + detail,
        evidence=evidence,
        recommendation=advice,
    )


def _summary(
    rank: int,
    host: str,
    late_s: float,
    step_s: float,
    steps: np.ndarray,
    cols: np.ndarray,
    pattern: dict[str, object] | None,
) -> str:
    """What the evidence shows: how much longer the rank's own work between collectives
    takes than its peers', and over which steps; the others wait for it."""
    head = f"rank {rank} on {host} holds its peers up"
    if pattern is None:
        span = (
            ""
            if len(steps) >= 0.9 * len(cols)
            else f" in steps {int(steps.min())}-{int(steps.max())}"
        )
        return (
            f"{head}{span}: its own work between collectives takes {late_s * 1e3:.1f} ms "
            f"longer than theirs ({100 * late_s / step_s:.0f}% of a step)"
        )
    if pattern["pattern"] == "periodic":
        return (
            f"{head} every {pattern['every_steps']} steps ({len(steps)} times), "
            f"{late_s * 1e3:.1f} ms each time"
        )
    if pattern["pattern"] == "span":
        return f"{head} in steps {pattern['steps']}, {late_s * 1e3:.1f} ms per step"
    return (
        f"{head} now and then ({len(steps)} of {len(cols)} steps, {late_s * 1e3:.1f} ms each time)"
    )


def lateness_cause(
    run: RunData,
    m: RankStepMatrix,
    row: int,
    others: np.ndarray,
    steps: np.ndarray,
    late_s: float,
    step_s: float,
    evidence: dict[str, object],
    settings: Settings,
    with_previous: bool = False,
) -> tuple[str, str, str]:
    """Why `row` was `late_s` behind its peers in `steps`. With `with_previous`, each of
    `steps` is judged with the step before it (thread_time.cells)."""
    rank = int(m.ranks[row])
    rows = np.array([row])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: NaN, no cause below
        data_mine = float(np.nanmedian(cells(m.data_wait_s, rows, steps, with_previous)))
        data_others = float(np.nanmedian(cells(m.data_wait_s, others, steps, with_previous)))
    evidence["data_wait_ms"] = round(data_mine * 1e3, 3)
    evidence["data_wait_ms_others"] = round(data_others * 1e3, 3)
    explains = settings.cause_explains_lateness_ratio * late_s
    if data_mine - data_others >= explains:
        return (
            "data_loading",
            f"; it waits {1e3 * (data_mine - data_others):.1f} ms more than its peers for "
            "its DataLoader",
            "give this rank's DataLoader more workers (num_workers), pin_memory and "
            "prefetching, or check its storage path and input shards",
        )
    memory = _memory_pressure(m, row, others, steps, late_s, evidence, settings)
    if memory is not None:
        return memory
    throttle = _gpu_throttle(run, rank, settings.throttled_share_ratio)
    if throttle:
        evidence["gpu_clock_events"] = throttle
    tt = thread_time(m, row, others, steps, with_previous)
    if tt is not None:
        evidence.update(tt.evidence())
        named = tt.cause(late_s, settings)
    else:
        named = cause_from_rates(run, m, rank, steps, late_s, evidence, settings)
    per = "per step"
    if with_previous:
        per = "over each late step and the one before it"
        evidence["clocks_over"] = "each late step and the one before it"
    if named in ("host_contention", "cpu_throttled") or (named and not throttle):
        return named, *_cause_text(named, evidence, per)
    if throttle:
        return (
            "gpu_throttling",
            f"; its GPU clocks dropped ({throttle})",
            "check the GPU's cooling and power (nvidia-smi -q -d PERFORMANCE), and the "
            "node's power capping",
        )
    if tt is not None and late_s - max(tt.extra_cpu_s, 0) - max(tt.extra_wait_s, 0) >= explains:
        return (
            "unknown",
            f"; its thread was off the CPU without waiting for one ({tt.cpu_s * 1e3:.1f} ms "
            f"on a CPU and {tt.wait_s * 1e3:.1f} ms in the run queue {per}, peers "
            f"{tt.cpu_others_s * 1e3:.1f} and {tt.wait_others_s * 1e3:.1f} ms): stopped from "
            "outside (a hypervisor, SIGSTOP, a cgroup's CPU limit) or asleep",
            "look at this rank's host and process: CPU throttling (cpu.stat nr_throttled), "
            "steal time, something that stops or suspends it, sleeps in the training loop",
        )
    return (
        "unknown",
        "; no signal separates it from its peers (DataLoader wait, run-queue wait, CPU "
        "time, GPU clocks): its work is slower for a reason not measured here, or it was "
        "stopped from outside (a hypervisor, a co-tenant's cgroup throttling)",
        "look at what this rank does differently and at its host: CPU throttling "
        "(cpu.stat nr_throttled), steal time, other tenants, uneven inputs",
    )


def _memory_pressure(
    m: RankStepMatrix,
    row: int,
    others: np.ndarray,
    steps: np.ndarray,
    late_s: float,
    evidence: dict[str, object],
    settings: Settings,
) -> tuple[str, str, str] | None:
    """The rank's device allocator is why it is late: it retried (freed its cache and
    synchronized the device) in the steps where the rank was late while its peers' did
    not, or its device was nearly full while theirs were not. None otherwise, or where
    the run has no device figures."""
    if m.alloc_retries is None:
        return None
    mine = m.alloc_retries[row, steps]
    if not np.isfinite(mine).any():
        return None
    peers = m.alloc_retries[np.ix_(others, steps)]
    retried = np.nan_to_num(mine) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        peers_share = float(np.nanmedian(np.nanmean(peers > 0, axis=1))) if len(peers) else 0.0
        late_retried = (
            float(np.nanmedian(m.own_late_s[row, steps[retried]])) if retried.any() else 0.0
        )
        late_plain = (
            float(np.nanmedian(m.own_late_s[row, steps[~retried]])) if (~retried).any() else 0.0
        )
    share = float(retried.mean())
    peak = m.mem_peak_of_total
    full = peak is not None and np.isfinite(peak[row]) and peak[row] >= settings.memory_full_ratio
    peers_full = (
        float(np.nanmedian(peak[others])) if peak is not None and np.isfinite(peak[others]).any()
        else 0.0
    )  # fmt: skip
    evidence["alloc_retries"] = int(np.nansum(mine))
    evidence["alloc_retries_others"] = round(float(np.nanmedian(np.nansum(peers, axis=1))), 1)
    if peak is not None and np.isfinite(peak[row]):
        evidence["memory_peak_of_total"] = round(float(peak[row]), 3)
        evidence["memory_peak_of_total_others"] = round(peers_full, 3)
    explains = settings.cause_explains_lateness_ratio * late_s
    by_retries = (
        retried.any()
        and peers_share <= share / 4
        and (share >= settings.memory_retry_share_ratio or late_retried - late_plain >= explains)
    )
    by_fullness = full and peers_full < settings.memory_peers_full_ratio
    if not (by_retries or by_fullness):
        return None
    detail = (
        f"; its GPU memory allocator retried in {int(retried.sum())} of these {len(steps)} "
        f"steps (peers in {100 * peers_share:.0f}% of theirs): each retry frees the cache "
        "and synchronizes the device"
        if by_retries
        else f"; its device was {100 * float(peak[row]):.0f}% full at peak (peers "  # type: ignore[index]
        f"{100 * peers_full:.0f}%)"
    )
    return (
        "memory_pressure",
        detail,
        "give this rank headroom: PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, a "
        "smaller micro-batch, activation checkpointing, or an even split of the model's "
        "memory across ranks",
    )


def cause_from_rates(
    run: RunData,
    m: RankStepMatrix,
    rank: int,
    steps: np.ndarray,
    late_s: float,
    evidence: dict[str, object],
    settings: Settings,
) -> str:
    """For runs recorded without the thread's clocks: the node agent's per-rank rates
    over the run, turned into seconds over the run, must explain the lateness summed over
    the steps where the rank held the others up."""
    run_s = float(np.nansum(np.nanmax(m.duration_s, axis=0)))
    lateness_total_s = max(late_s, 0.0) * len(steps)
    explains_s = settings.cause_explains_lateness_ratio * lateness_total_s
    cpu_wait = _versus_peers(run, RANK_CPU_WAIT, rank, "cpu_wait_s_per_s", evidence)
    if cpu_wait is not None:
        mine, rest = cpu_wait
        # with more ranks than cores the rank with more work also waits a little more for
        # a CPU, and that is not what made it late
        if mine - rest >= settings.cpu_wait_excess_s_per_s and (mine - rest) * run_s >= explains_s:
            return "host_contention"
    cpu = _versus_peers(run, RANK_CPU, rank, "cpu_s_per_s", evidence)
    if cpu is not None:
        mine, rest = cpu
        if mine - rest >= settings.cpu_excess_s_per_s and (mine - rest) * run_s >= explains_s:
            return "slow_compute"
    return ""


# cause: (what the thread's clocks show, what the agent's rates show, a conclusion,
# advice); each phrase takes its evidence key's value and the peers' (key + "_others")
_CAUSE_TEXT = {
    "host_contention": (
        ("step_cpu_wait_ms", "its thread waited {} ms {per} for a CPU (peers {})"),
        ("cpu_wait_s_per_s", "its threads waited {:.2f} s per second for a CPU (peers {:.2f})"),
        "",
        "find what else runs on this rank's cores (top, ps -eLo psr), pin ranks and "
        "DataLoader workers to separate cores, or lower OMP_NUM_THREADS",
    ),
    "cpu_throttled": (
        ("step_cpu_throttled_ms", "its cgroup's CPU limit held it {} ms {per} (peers {})"),
        ("step_cpu_throttled_ms", "its cgroup's CPU limit held it {} ms {per} (peers {})"),
        ": its container used up its CPU quota in those periods (CFS bandwidth control), "
        "and no other process needed the CPU",
        "raise or remove the CPU limit of this rank's container or cgroup (Kubernetes "
        "resources.limits.cpu, docker --cpus, systemd CPUQuota; cpu.max or "
        "cpu.cfs_quota_us): its DataLoader workers and framework threads count against "
        "it too; or lower num_workers and OMP_NUM_THREADS to fit",
    ),
    "slow_compute": (
        ("step_cpu_ms", "its thread computes {} ms {per} (peers {})"),
        ("cpu_s_per_s", "it burns more CPU than its peers ({:.2f} s per second, peers {:.2f})"),
        ": its own work takes more CPU (heavier work, or a slower CPU)",
        "compare this rank's work with its peers' (uneven batch or sequence lengths, an "
        "extra role such as logging or checkpointing on this rank); if the work is the "
        "same, its CPU is slower: its clock (thermal or power capping, cpupower "
        "frequency-info) or another tenant's cache and memory traffic on its socket",
    ),
}


def _cause_text(cause: str, evidence: dict[str, object], per: str = "per step") -> tuple[str, str]:
    """The detail and advice of a cause named from the thread's clocks or the rates."""
    by_steps, by_rates, conclusion, advice = _CAUSE_TEXT[cause]
    key, phrase = by_steps if by_steps[0] in evidence else by_rates
    said = phrase.format(evidence[key], evidence[key + "_others"], per=per)
    return f"; {said}{conclusion}", advice


def _versus_peers(
    run: RunData, name: str, rank: int, key: str, evidence: dict[str, object]
) -> tuple[float, float] | None:
    """A per-rank counter's rate for `rank` and the median of the others' (also put in
    the evidence as `key` and `key`_others); None where it was not sampled."""
    rates = counter_rates(run, name)
    if rank not in rates or len(rates) < 2:
        return None
    mine = rates[rank]
    rest = float(np.median([v for r, v in rates.items() if r != rank]))
    evidence[key] = round(mine, 3)
    evidence[key + "_others"] = round(rest, 3)
    return mine, rest


def counter_rates(run: RunData, name: str, over_last_s: float | None = None) -> dict[int, float]:
    """A per-rank counter of the node agents (CPU seconds, run-queue wait) as a rate
    (s/s) per rank over the run, or over the last `over_last_s` of its samples (the
    live window's span, where the samples reach further back)."""
    rates: dict[int, float] = {}
    for samples in run.node_samples.values():
        names = samples["name"] == name
        for labels in set(samples["labels"][names]):
            fields = parse_labels(labels)
            t, v = series(samples, name, labels)
            if len(t) and over_last_s is not None:
                # two samples at least: a short window still has a rate
                first = min(int(np.searchsorted(t, t[-1] - over_last_s * 1e9)), len(t) - 2)
                first = max(first, 0)
                t, v = t[first:], v[first:]
            if len(t) >= 2 and t[-1] > t[0] and "rank" in fields:
                rates[int(fields["rank"])] = float((v[-1] - v[0]) / ((t[-1] - t[0]) / 1e9))
    return rates


def _gpu_throttle(run: RunData, rank: int, throttled_share: float) -> str:
    """Thermal/power clock events that hold this rank's GPU down more than its peers'.

    A GPU at full load often sits at its power cap (sw_power_cap) as a matter of course:
    that is throttling only where this rank's GPU is held down in a clearly larger share
    of the samples than the median of the other ranks' GPUs. The rank's GPU comes from the
    agent's process map (mrcdiag_gpu_rank_info); without it, GPU index = local rank, the
    usual one-process-per-GPU layout.
    """
    share, reasons = _throttled_share(run, rank)
    if share < throttled_share:
        return ""
    peers = [_throttled_share(run, r)[0] for r in run.ranks if r != rank]
    peers = [v for v in peers if not np.isnan(v)]
    if peers and share - float(np.median(peers)) < throttled_share:
        return ""
    return ", ".join(sorted(reasons))


def _throttled_share(run: RunData, rank: int) -> tuple[float, set[str]]:
    """(share of the samples with a throttle reason active, the reasons seen) of the rank's
    GPU; NaN where its node has no GPU samples."""
    samples = run.node_samples.get(run.host_of(rank))
    if samples is None:
        return float("nan"), set()
    gpu = gpu_of(run, rank)
    events = samples["name"] == GPU_CLOCK_EVENT_ACTIVE
    sampled: set[int] = set()
    held: set[int] = set()
    reasons: set[str] = set()
    for t, labels, value in zip(
        samples["t_ns"][events], samples["labels"][events], samples["value"][events], strict=True
    ):
        fields = parse_labels(labels)
        if fields.get("gpu") != gpu:
            continue
        sampled.add(int(t))
        if value > 0 and fields.get("reason") in THROTTLE_REASONS:
            held.add(int(t))
            reasons.add(fields["reason"])
    if not sampled:
        return float("nan"), set()
    return len(held) / len(sampled), reasons


def _set_excess(
    inst: Instances, members: set[int], m: RankStepMatrix, cols: np.ndarray
) -> np.ndarray:
    """Per steady step: how much later collectives began because of `members` together."""
    rec = inst.records
    inside = np.isin(rec["rank"], list(members))
    n = inst.n_instances
    lo = np.full(n, -np.inf)
    np.maximum.at(lo, rec["instance"][~inside], rec["t_arrive_ns"][~inside].astype(float))
    hi = np.full(n, -np.inf)
    np.maximum.at(hi, rec["instance"][inside], rec["t_arrive_ns"][inside].astype(float))
    ok = np.isfinite(lo) & np.isfinite(hi)
    excess = np.where(ok, np.maximum(hi - lo, 0), 0) / 1e9
    per_step = np.zeros(m.duration_s.shape[1])
    is_async = np.zeros(n, dtype=bool)
    is_async[rec["instance"]] = rec["is_async"]
    valid = (inst.step >= 0) & (inst.step < len(per_step))
    np.add.at(per_step, inst.step[valid & ~is_async], excess[valid & ~is_async])
    overlapped = median_by(inst.step[valid & is_async], excess[valid & is_async], len(per_step))
    return (per_step + np.nan_to_num(overlapped))[cols]


def _slow_nodes(
    run: RunData,
    inst: Instances,
    m: RankStepMatrix,
    rows: dict[int, np.ndarray],
    cols: np.ndarray,
    step_s: float,
    run_s: float,
    settings: Settings,
) -> list[Finding]:
    """All ranks of one node straggle together: one finding for the node."""
    by_host: dict[str, list[int]] = {}
    for rank in run.ranks:
        by_host.setdefault(run.host_of(rank), []).append(rank)
    if len(by_host) < 2:
        return []
    flagged_ranks = {int(m.ranks[r]) for r in rows}
    out = []
    for host, ranks in sorted(by_host.items()):
        if len(ranks) < 2 or not set(ranks) <= flagged_ranks:
            continue
        member_rows = [m.row(r) for r in ranks]
        late_s = float(np.nanmedian(m.own_late_s[np.ix_(member_rows, cols)]))
        lost_s = float(np.nansum(_set_excess(inst, set(ranks), m, cols)))
        evidence: dict[str, object] = {
            "median_lateness_ms": round(late_s * 1e3, 3),
            "job_step_time_ms": round(step_s * 1e3, 3),
            "ranks_on_node": len(ranks),
        }
        detail, advice = _node_reason(m, member_rows, cols, late_s, evidence, settings)
        out.append(
            Finding(
                kind="straggler",
                severity=straggler_severity(settings, late_s, lost_s, step_s, run_s),
                cause="slow_node",
                time_lost_s=lost_s,
                ranks=tuple(sorted(ranks)),
                nodes=(host,),
                summary=f"every rank of node {host} ({len(ranks)} ranks) arrives "
                f"{late_s * 1e3:.1f} ms behind the other nodes' ranks{detail}",
                evidence=evidence,
                recommendation=advice,
            )
        )
    return out


def _node_reason(
    m: RankStepMatrix,
    member_rows: list[int],
    cols: np.ndarray,
    late_s: float,
    evidence: dict[str, object],
    settings: Settings,
) -> tuple[str, str]:
    """Why a node's ranks are behind, where their threads' clocks against the other
    nodes' tell (a CPU limit on its pods, another tenant on its cores, slower work), as
    for one rank; the detail for the summary and the advice."""
    advice = (
        "drain or inspect this node: CPU frequency and load, other tenants, thermal "
        "state, memory errors; rerun without it to confirm"
    )
    others = np.setdiff1d(np.arange(len(m.ranks)), member_rows)
    tt = thread_time(m, np.array(member_rows), others, cols) if len(others) else None
    if tt is None:
        return "", advice
    why = tt.cause(late_s, settings)
    evidence.update(tt.evidence())
    if not why:
        return "", advice
    evidence["reason"] = why
    detail, why_advice = _cause_text(why, evidence)
    for one, node in (
        ("its thread ", "its ranks' threads "),
        ("its cgroup's CPU limit held it", "their cgroups' CPU limit held them"),
        ("its container used up its", "their containers used up their"),
        ("threads computes", "threads compute"),
        (": its own work takes more CPU (heavier work, or a slower CPU)", ": the same work "
         "takes more CPU there"),
        ("(peers ", "(other nodes "),
    ):  # fmt: skip
        detail = detail.replace(one, node)
    if why == "slow_compute":
        return detail, advice
    return detail, why_advice.replace("container or cgroup", "containers or cgroups").replace(
        "this rank's", "its ranks'"
    )
