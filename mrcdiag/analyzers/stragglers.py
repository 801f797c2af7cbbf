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

import numpy as np

from mrcdiag.analyzers.common import job_step_time, robust_sigma, steady_columns, windows
from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.instances import Instances
from mrcdiag.analyzers.lateness import RankStepMatrix
from mrcdiag.analyzers.settings import Settings
from mrcdiag.metrics import GPU_CLOCK_EVENT_ACTIVE, GPU_RANK_INFO, RANK_CPU_WAIT, THROTTLE_REASONS
from mrcdiag.store.reader import RunData, series
from mrcdiag.store.samples import parse_labels


def robust_total(per_step: np.ndarray, trim: float = 0.1) -> float:
    """Trimmed mean per step (10% cut at each end) times the steps: a neighbour's spike in
    one step neither adds to nor hides the straggler's cost, and a rank that is last in
    only some steps still gets the cost of those steps."""
    values = np.sort(per_step[~np.isnan(per_step)])
    if len(values) == 0:
        return 0.0
    cut = int(len(values) * trim)
    kept = values[cut : len(values) - cut] if len(values) > 2 * cut else values
    return float(np.mean(kept) * len(values))


def find_stragglers(
    run: RunData, inst: Instances, m: RankStepMatrix, settings: Settings
) -> list[Finding]:
    cols = steady_columns(m.duration_s.shape[1], settings.warmup_steps)
    if len(cols) < 3 or len(m.ranks) < 2:
        return []
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
    flagged: dict[int, np.ndarray] = {}  # row -> steps in which it straggled
    all_windows = windows(cols, settings.window_min_steps, settings.windows_per_run)
    for window in all_windows:
        late = m.own_late_s[:, window]  # arriving late only because a link delivered
        # to this rank last is the link's finding (interconnect), not a straggler
        with warnings.catch_warnings():  # ranks outside every group have all-NaN rows
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(late, axis=1)
            behind = np.nanmean(np.where(np.isnan(late), np.nan, late > 0), axis=1)
        spread = robust_sigma(med) if len(m.ranks) >= 5 else 0.0
        centre = float(np.nanmedian(med)) if len(m.ranks) >= 5 else 0.0
        for row in np.flatnonzero(
            (med >= floor)
            & (behind >= settings.persistence_ratio)
            & (med - centre > settings.outlier_sigmas * spread)
        ):
            flagged.setdefault(int(row), []).append(window)
    n_windows = len(all_windows)
    needed = 1 if n_windows <= 2 else 2
    rows = {r: np.concatenate(w) for r, w in flagged.items() if len(w) >= needed}
    if not rows:
        return []
    findings = _slow_nodes(run, inst, m, rows, cols, step_s, run_s, settings)
    in_node = {r for f in findings for r in f.ranks}
    for row, steps in rows.items():
        rank = int(m.ranks[row])
        if rank in in_node:
            continue
        findings.append(_rank_finding(run, m, row, steps, cols, step_s, run_s, settings))
    return findings


def _cross_host(run: RunData) -> bool:
    return any(i.clock_method == "ping_pong" for i in run.ranks.values())


def _severity(
    settings: Settings,
    late_s: float,
    lost_s: float,
    step_s: float,
    run_s: float,
    share_of_run: float = 1.0,
) -> str:
    """critical: costs a fifth of the run; warning: costs 2% of it, or late by 3% of a step
    (and at least a millisecond) through at least half of it (a rank 5% slower among a
    thousand costs the job little, the others' own jitter hides most of it, yet it is a
    rank to look at). An episode that neither lasts nor costs (the jitter of a shared
    machine) stays info."""
    lost_share = lost_s / run_s if run_s > 0 else 0.0
    if lost_share >= settings.critical_lost_of_run_ratio:
        return "critical"
    persistent = (
        late_s / step_s >= settings.warning_lateness_of_step_ratio
        and late_s >= settings.min_persistent_lateness_s
        and share_of_run >= settings.min_share_of_run_to_warn_ratio
    )
    if lost_share >= settings.warning_lost_of_run_ratio or persistent:
        return "warning"
    return "info"


def _rank_finding(
    run: RunData,
    m: RankStepMatrix,
    row: int,
    steps: np.ndarray,
    cols: np.ndarray,
    step_s: float,
    run_s: float,
    settings: Settings,
) -> Finding:
    rank = int(m.ranks[row])
    late_s = float(np.nanmedian(m.own_late_s[row, steps]))
    lost_s = robust_total(
        np.minimum(m.excess_s[row, steps], np.maximum(m.own_late_s[row, steps], 0))
    )
    others = np.arange(len(m.ranks)) != row
    evidence: dict[str, object] = {
        "median_lateness_ms": round(late_s * 1e3, 3),
        "median_arrival_lateness_ms": round(float(np.nanmedian(m.late_s[row, steps])) * 1e3, 3),
        "steps_behind_peers": f"{100 * np.nanmean(m.own_late_s[row, steps] > 0):.0f}%",
        "job_step_time_ms": round(step_s * 1e3, 3),
        "straggling_steps": f"{int(steps.min())}-{int(steps.max())}",
    }
    cause, detail, advice = _cause(run, m, row, others, steps, late_s, step_s, evidence, settings)
    host = run.host_of(rank)
    return Finding(
        kind="straggler",
        severity=_severity(settings, late_s, lost_s, step_s, run_s, len(steps) / len(cols)),
        cause=cause,
        time_lost_s=lost_s,
        ranks=(rank,),
        nodes=(host,),
        summary=f"rank {rank} on {host} arrives {late_s * 1e3:.1f} ms behind its peers "
        f"({100 * late_s / step_s:.0f}% of a step){detail}",
        evidence=evidence,
        recommendation=advice,
    )


def _cause(
    run: RunData,
    m: RankStepMatrix,
    row: int,
    others: np.ndarray,
    steps: np.ndarray,
    late_s: float,
    step_s: float,
    evidence: dict[str, object],
    settings: Settings,
) -> tuple[str, str, str]:
    rank = int(m.ranks[row])
    data_mine = float(np.nanmedian(m.data_wait_s[row, steps]))
    data_others = float(np.nanmedian(m.data_wait_s[np.ix_(others, steps)]))
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
    cpu_wait = _cpu_wait_rates(run)
    if rank in cpu_wait and len(cpu_wait) >= 2:
        mine = cpu_wait[rank]
        rest = float(np.median([v for r, v in cpu_wait.items() if r != rank]))
        evidence["cpu_wait_s_per_s"] = round(mine, 3)
        evidence["cpu_wait_s_per_s_others"] = round(rest, 3)
        # The extra run-queue wait must explain the lateness, as the data wait must: with
        # more ranks than cores the rank with more work also waits a little more for a
        # CPU, and that is not what made it late.
        extra_wait_per_step_s = (mine - rest) * step_s
        if mine - rest >= settings.cpu_wait_excess_s_per_s and extra_wait_per_step_s >= explains:
            return (
                "host_contention",
                f"; its threads waited {mine:.2f} s per second for a CPU (peers {rest:.2f})",
                "find what else runs on this rank's cores (top, ps -eLo psr), pin ranks and "
                "DataLoader workers to separate cores, or lower OMP_NUM_THREADS",
            )
    throttle = _gpu_throttle(run, rank, settings.throttled_share_ratio)
    if throttle:
        evidence["gpu_clock_events"] = throttle
        return (
            "gpu_throttling",
            f"; its GPU clocks dropped ({throttle})",
            "check the GPU's cooling and power (nvidia-smi -q -d PERFORMANCE), and the "
            "node's power capping",
        )
    return (
        "slow_compute",
        "; nothing in its inputs or host explains it: its own work is slower",
        "compare this rank's work with its peers' (uneven batch or sequence lengths, an "
        "extra role such as logging or checkpointing on this rank) and its hardware",
    )


def _cpu_wait_rates(run: RunData) -> dict[int, float]:
    """Run-queue wait (s/s) per rank over the run, from the node agents' samples."""
    rates: dict[int, float] = {}
    for samples in run.node_samples.values():
        names = samples["name"] == RANK_CPU_WAIT
        for labels in set(samples["labels"][names]):
            fields = parse_labels(labels)
            t, v = series(samples, RANK_CPU_WAIT, labels)
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
    info = run.ranks.get(rank)
    gpu = str(info.local_rank) if info else "?"
    mapped = samples["name"] == GPU_RANK_INFO
    for labels in samples["labels"][mapped]:
        fields = parse_labels(labels)
        if fields.get("rank") == str(rank):
            gpu = fields.get("gpu", gpu)
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
    peak = np.zeros(len(per_step))
    np.maximum.at(peak, inst.step[valid & is_async], excess[valid & is_async])
    return (per_step + peak)[cols]


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
        lost_s = robust_total(_set_excess(inst, set(ranks), m, cols))
        out.append(
            Finding(
                kind="straggler",
                severity=_severity(settings, late_s, lost_s, step_s, run_s),
                cause="slow_node",
                time_lost_s=lost_s,
                ranks=tuple(sorted(ranks)),
                nodes=(host,),
                summary=f"every rank of node {host} ({len(ranks)} ranks) arrives "
                f"{late_s * 1e3:.1f} ms behind the other nodes' ranks",
                evidence={
                    "median_lateness_ms": round(late_s * 1e3, 3),
                    "job_step_time_ms": round(step_s * 1e3, 3),
                    "ranks_on_node": len(ranks),
                },
                recommendation="drain or inspect this node: CPU frequency and load, other "
                "tenants, thermal state, memory errors; rerun without it to confirm",
            )
        )
    return out
