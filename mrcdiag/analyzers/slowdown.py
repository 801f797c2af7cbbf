"""Slowdowns: the whole job's pace changed partway (a fail-slow that hits every rank).

The job's step time (the slowest rank's, per step) is smoothed with a running median,
and the change point is where the cumulative deviation from the overall median peaks
(a CUSUM on the de-spiked series). A change counts when it is large (15% or more) and far outside the
noise of both sides. If only one rank's own work grew, that is a straggler that started
late, reported by the straggler analyzer, not a slowdown. Where the ranks' own work grew,
their training threads' clocks say why: more CPU (more work, slower CPUs), more waiting
for a CPU with about the same CPU (another process arrived on the nodes), or neither
(stopped from outside).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from mrcdiag.analyzers.common import job_step_time, nan_median_rows, robust_sigma, steady_columns
from mrcdiag.analyzers.findings import Finding
from mrcdiag.analyzers.lateness import RankStepMatrix
from mrcdiag.analyzers.settings import DEFAULTS, Settings

# The standard error of a median is this times sigma / sqrt(n) (normal data: sqrt(pi/2)).
MEDIAN_SE_FACTOR = 1.2533


def _running_median(x: np.ndarray, width: int = 5) -> np.ndarray:
    if len(x) < width:
        return x
    pad = width // 2
    padded = np.pad(x, pad, mode="reflect")  # "edge" would weigh an end spike 3 times
    view = np.lib.stride_tricks.sliding_window_view(padded, width)
    return np.median(view, axis=1)


def change_point(x: np.ndarray, min_side: int = DEFAULTS.slowdown_min_side_steps) -> int | None:
    """Index where the level of x changes most, or None when x is too short."""
    if len(x) < 2 * min_side:
        return None
    smooth = _running_median(x)
    # Centred on the mean, the sum is 0 at both ends and peaks at the change; the running
    # median has already taken the spikes out.
    cusum = np.cumsum(smooth - np.mean(smooth))
    inner = np.arange(min_side, len(x) - min_side)
    return int(inner[np.argmax(np.abs(cusum[inner - 1]))])


def find_slowdowns(m: RankStepMatrix, settings: Settings) -> list[Finding]:
    cols = steady_columns(m.duration_s.shape[1], settings.warmup_steps)
    job = job_step_time(m.duration_s[:, cols])
    ok = np.isfinite(job)
    cols, job = cols[ok], job[ok]
    k = change_point(job, settings.slowdown_min_side_steps)
    if k is None or not is_slower(job[:k], job[k:], settings):
        return []
    finding = describe_slowdown(m, cols[:k], cols[k:], settings)
    return [finding] if finding is not None else []


def is_slower(before: np.ndarray, after: np.ndarray, settings: Settings) -> bool:
    """Whether the job's step times `after` are a slower pace than `before`: by 15% or
    more, and far outside the noise of single steps and of the two medians."""
    b, a = float(np.median(before)), float(np.median(after))
    # The shift must stand out from the noise of single steps (2 sigma) of the steadier
    # side, and, as a shift of medians, from their standard error (4 SE, each side with
    # its own noise and length); the 15% floor keeps small drifts out. A change that
    # brings noise with it (a co-tenant's bursts: 9.8 ms steps with 0.5 ms of noise, then
    # 30.9 ms with 14 ms) is still a change of pace: against the noisier side's single
    # steps it was not (21 ms < 2 x 14 ms), though no step after it was as quick as before.
    sigma_before = max(robust_sigma(before), 1e-6)
    sigma_after = max(robust_sigma(after), 1e-6)
    standard_error = MEDIAN_SE_FACTOR * np.sqrt(
        sigma_before**2 / len(before) + sigma_after**2 / len(after)
    )
    shift_needed = max(
        settings.slowdown_step_sigmas * min(sigma_before, sigma_after),
        settings.slowdown_sigmas * standard_error,
    )
    return b > 0 and a / b >= settings.slowdown_min_ratio and (a - b) >= shift_needed


def slowdown_severity(ratio: float, lost_s: float, settings: Settings) -> str:
    """critical from 1.5x the pace before; info while it has cost the job less than
    Settings.min_warning_lost_s in all (as for a straggler: a shared machine's pace moves
    by a third for a few dozen steps now and then, a fault worth seeing costs more)."""
    if lost_s < settings.min_warning_lost_s:
        return "info"
    return "critical" if ratio >= settings.slowdown_critical_ratio else "warning"


def describe_slowdown(
    m: RankStepMatrix, before: np.ndarray, after: np.ndarray, settings: Settings
) -> Finding | None:
    """The slowdown between the step columns `before` and `after` (the job is known to be
    slower in them): what grew, on whom. None when only one rank's own work grew (a
    straggler that started late, which the straggler analyzer reports)."""
    cols = np.concatenate([before, after])
    k = len(before)
    job = job_step_time(m.duration_s[:, cols])
    b, a = float(np.nanmedian(job[:k])), float(np.nanmedian(job[k:]))
    # Whose own work grew? busy = step - waiting for peers - data wait
    busy = m.duration_s[:, cols] - m.wait_s[:, cols] - m.data_wait_s[:, cols]
    grew = nan_median_rows(busy[:, k:]) - nan_median_rows(busy[:, :k])
    job_growth = a - b
    data_growth = float(
        np.nanmedian(m.data_wait_s[:, cols][:, k:]) - np.nanmedian(m.data_wait_s[:, cols][:, :k])
    )
    broad = (
        np.mean(grew + 1e-12 >= 0.5 * (job_growth - max(data_growth, 0)))
        >= settings.slowdown_broad_ratio
    )
    if not broad and data_growth < 0.5 * job_growth:
        return None  # one rank's problem: the straggler analyzer reports it
    comm_growth = float(
        np.nanmedian(m.blocked_s[:, cols][:, k:] - m.wait_s[:, cols][:, k:])
        - np.nanmedian(m.blocked_s[:, cols][:, :k] - m.wait_s[:, cols][:, :k])
    )
    compute_growth = float(np.nanmedian(grew)) - max(comm_growth, 0)
    parts = {
        "compute": compute_growth,
        "communication": comm_growth,
        "data_wait": data_growth,
    }
    grown = max(parts, key=lambda p: parts[p])
    start_step = int(cols[k])
    lost = float(np.nansum(np.maximum(job[k:] - b, 0)))
    cause = {
        "compute": "slow_compute",
        "communication": "slow_link",
        "data_wait": "data_loading",
    }[grown]
    advice = (
        "look at what changed on every node at that step: a thermal or power event, a "
        "network degradation, a change in the data (longer sequences), or a phase of the "
        "training code"
    )
    retries = _retry_shares(m, before, after)
    if grown == "compute" and retries is not None:
        share_before, share_after = retries
        if share_after >= settings.memory_retry_share_ratio and share_before <= share_after / 4:
            cause = "memory_pressure"
            advice = (
                "the GPU memory allocators began retrying at that step (each retry frees "
                "the cache and synchronizes the device): give the ranks headroom "
                "(PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, a smaller micro-batch, "
                "activation checkpointing), or find what grew (sequence length, a cache)"
            )
    clocks = thread_clocks(m, before, after)
    detail = ""
    if cause == "slow_compute" and clocks is not None:
        cause, detail, advice = _compute_cause(clocks, compute_growth, advice, settings)
    elif cause == "slow_link" and clocks is not None:
        # Time in collectives grows when the CPUs are taken too: gloo moves the data on
        # the CPU, and NCCL's proxy threads need one. A slow link does not make the
        # stepping threads wait in a run queue; where that wait grew by as much as the
        # communication did, with no more CPU, the CPUs are why (four busy loops on a
        # 2-core node: communication +8.2 ms, compute +7.8 ms, run-queue wait +10.3 ms).
        held, held_detail, held_advice = _compute_cause(clocks, comm_growth, advice, settings)
        if held in ("host_contention", "cpu_throttled"):
            cause, advice = held, held_advice
            detail = f"{held_detail} (their communication threads wait for one too)"
    finding = Finding(
        kind="slowdown",
        severity=slowdown_severity(a / b, lost, settings),  # as the live analysis says
        cause=cause,
        time_lost_s=lost,
        ranks=tuple(int(r) for r in m.ranks),
        summary=f"from step {start_step} every rank got slower: step time "
        f"{b * 1e3:.1f} ms -> {a * 1e3:.1f} ms (+{100 * (a / b - 1):.0f}%), "
        f"mostly in {grown.replace('_', ' ')}{detail}",
        evidence={
            "start_step": start_step,
            "step_time_before_ms": round(b * 1e3, 3),
            "step_time_after_ms": round(a * 1e3, 3),
            "growth_ms": {p: round(v * 1e3, 3) for p, v in parts.items()},
            "ranks_slower": int(np.sum(grew >= 0.5 * job_growth)),
            **(
                {
                    "step_cpu_ms_before": round(clocks.cpu_before_s * 1e3, 3),
                    "step_cpu_ms_after": round(clocks.cpu_after_s * 1e3, 3),
                    "step_cpu_wait_ms_before": round(clocks.wait_before_s * 1e3, 3),
                    "step_cpu_wait_ms_after": round(clocks.wait_after_s * 1e3, 3),
                }
                if clocks is not None
                else {}
            ),
            **(
                {
                    "step_cpu_throttled_ms_before": round(clocks.throttled_before_s * 1e3, 3),
                    "step_cpu_throttled_ms_after": round(clocks.throttled_after_s * 1e3, 3),
                }
                if clocks is not None and np.isfinite(clocks.throttled_growth_s)
                else {}
            ),
            **(
                {
                    "steps_with_alloc_retries_before": round(retries[0], 3),
                    "steps_with_alloc_retries_after": round(retries[1], 3),
                }
                if retries is not None
                else {}
            ),
        },
        recommendation=advice,
    )
    return finding


@dataclass(frozen=True)
class ThreadClocks:
    """The ranks' training threads per step, before and after the change (seconds, the
    median over ranks of each rank's median): on a CPU, and waiting in a run queue."""

    cpu_before_s: float
    cpu_after_s: float
    wait_before_s: float
    wait_after_s: float
    # of the wait, the cgroups' CPU limits holding the ranks (NaN: not known)
    throttled_before_s: float = float("nan")
    throttled_after_s: float = float("nan")

    @property
    def cpu_growth_s(self) -> float:
        return self.cpu_after_s - self.cpu_before_s

    @property
    def wait_growth_s(self) -> float:
        return self.wait_after_s - self.wait_before_s

    @property
    def throttled_growth_s(self) -> float:
        return self.throttled_after_s - self.throttled_before_s


def thread_clocks(m: RankStepMatrix, before: np.ndarray, after: np.ndarray) -> ThreadClocks | None:
    """The threads' clocks around a change; None for runs recorded without them."""
    if m.cpu_s is None or m.cpu_wait_s is None:
        return None
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for a in (m.cpu_s, m.cpu_wait_s):
            for cols in (before, after):
                per_rank = nan_median_rows(a[:, cols])
                if not np.isfinite(per_rank).any():
                    return None
                out.append(float(np.nanmedian(per_rank)))
        if m.cpu_throttled_s is not None:  # NaN where not known
            for cols in (before, after):
                out.append(float(np.nanmedian(nan_median_rows(m.cpu_throttled_s[:, cols]))))
    return ThreadClocks(*out)


def _compute_cause(
    clocks: ThreadClocks, compute_growth_s: float, advice: str, settings: Settings
) -> tuple[str, str, str]:
    """Why every rank's own work grew, from the threads' clocks, as for one straggling
    rank (thread_time.ThreadTime.cause): more waiting for a CPU with about the same CPU
    per step is another process on the nodes (a job that does more work on a shared
    machine waits more too, but computes more as well); more CPU is more work or slower
    CPUs; neither is the ranks stopped from outside."""
    cpu_s, wait_s = clocks.cpu_growth_s, clocks.wait_growth_s
    explains = settings.cause_explains_lateness_ratio * max(compute_growth_s, 0.0)
    if wait_s >= explains and cpu_s <= settings.slowdown_contention_cpu_share * wait_s:
        if clocks.throttled_growth_s >= max(
            settings.throttled_share_of_wait_ratio * wait_s, settings.min_lateness_s
        ):
            return (
                "cpu_throttled",
                f"; the ranks' threads wait {wait_s * 1e3:.1f} ms more per step for a CPU, "
                f"{clocks.throttled_growth_s * 1e3:.1f} ms of it held by their cgroups' CPU "
                "limit",
                _LIMIT_ADVICE,
            )
        return (
            "host_contention",
            f"; the ranks' threads wait {wait_s * 1e3:.1f} ms more per step for a CPU",
            "another process took the ranks' CPUs from that step (a co-tenant, a daemon, a "
            "build or data job on the nodes): find it with top or pidstat, give the ranks "
            "their own cores (taskset, cgroups), or move the other work",
        )
    if cpu_s >= explains:
        return (
            "slow_compute",
            f"; the ranks' threads compute {cpu_s * 1e3:.1f} ms more per step",
            advice,
        )
    if clocks.throttled_growth_s >= max(explains, settings.min_lateness_s):  # NaN: not known
        return (
            "cpu_throttled",
            f"; their cgroups' CPU limit held the ranks {clocks.throttled_growth_s * 1e3:.1f} "
            "ms more per step (their threads waited off the CPU for peers and helper "
            "threads the limit held)",
            _LIMIT_ADVICE,
        )
    if compute_growth_s - max(cpu_s, 0.0) - max(wait_s, 0.0) >= explains:
        return (
            "unknown",
            "; the ranks' threads were off the CPU without waiting for one: stopped from "
            "outside (a hypervisor, SIGSTOP, a cgroup's CPU limit) or asleep",
            "look at the nodes: CPU throttling (cpu.stat nr_throttled), steal time, "
            "something that stops or suspends the job, sleeps in the training loop",
        )
    return "slow_compute", "", advice


_LIMIT_ADVICE = (
    "the ranks' containers use up their CPU quota from that step (CFS bandwidth control; "
    "cpu.stat nr_throttled): raise or remove the CPU limit (Kubernetes "
    "resources.limits.cpu, docker --cpus, systemd CPUQuota), or find what began to use it "
    "(more DataLoader workers, threads, a sidecar in the same container)"
)


def _retry_shares(
    m: RankStepMatrix, before: np.ndarray, after: np.ndarray
) -> tuple[float, float] | None:
    """The share of steps in which the ranks' allocators retried, before and after (the
    median over ranks); None without device figures."""
    if m.alloc_retries is None or not np.isfinite(m.alloc_retries[:, after]).any():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        shares = [
            float(np.nanmedian(np.nanmean(np.nan_to_num(m.alloc_retries[:, cols]) > 0, axis=1)))
            for cols in (before, after)
        ]
    return shares[0], shares[1]
