"""Every threshold of the analysis, in one record with its defaults.

`analyze(run, settings=Settings(...))` takes another record to change any of them (tests
and users alike); the analyzers read nothing else. Ratios are shares (0.25 = 25%).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    # Steps and robust statistics
    # memory_pressure: the rank's allocator retried in this share of its late steps (or
    # the retries explain the lateness) and its peers' in at most a quarter as many; or
    # its device was this full while its peers' were not
    memory_retry_share_ratio: float = 0.5
    memory_full_ratio: float = 0.95
    memory_peers_full_ratio: float = 0.9
    # pcie_degraded: judged on samples while the GPU was this busy (idle links drop
    # their generation), at least this many of them
    pcie_busy_ratio: float = 0.5
    pcie_min_busy_samples: int = 3
    warmup_steps: int = 3  # first steps hold compilation, allocator growth, connection set-up
    window_min_steps: int = 10  # steps in a window, at least, for a median to mean something
    windows_per_run: int = 8

    # Stragglers (analyzers/stragglers.py)
    persistence_ratio: float = 0.75  # share of a window's steps the rank is behind its peers
    # A lasting straggler, or one slow for a span, is behind its peers in so many of its
    # steps that chance gives it at most this often (stragglers._beyond_chance)
    lasting_chance: float = 0.001
    span_edge_ratio: float = 0.6  # a window next to a straggling one joins its span from here
    span_edge_lateness_ratio: float = 0.3  # ... late by this share of its lateness in the span
    # Episodic stragglers (periodic stalls, outside throttling, short spans): found by cost
    episodic_min_lost_of_run_ratio: float = 0.05  # what-if saving, of the steady run
    episodic_concentration: float = 3.0  # times any other rank's what-if saving
    episodic_min_events: int = 3  # steps in which it held the others up
    # a lasting straggler whose cost sits in fewer than this share of its steps is episodic
    episodic_share_of_span_ratio: float = 0.5
    episodic_quiet_ratio: float = 0.2  # ... and is late by less than this share elsewhere
    stall_of_typical_ratio: float = (
        5.0  # a lasting straggler's step costing this x its median is a stall
    )
    min_lateness_of_step_ratio: float = 0.01
    outlier_sigmas: float = 6.0  # with 5 ranks or more: beyond the ranks' own spread
    warning_lateness_of_step_ratio: float = 0.03
    warning_lost_of_run_ratio: float = 0.02
    critical_lost_of_run_ratio: float = 0.20
    min_share_of_run_to_warn_ratio: float = 0.5  # of the steady steps a lateness must span
    # A lasting lateness under this warns only through what it costs: a rank a few hundred
    # microseconds behind is the scheduling of a shared host, not a slow rank to go and see.
    min_persistent_lateness_s: float = 0.001
    # A straggler that cost the job less than this in all is info, whatever its share of
    # a short run: a co-runner's blip on a shared machine (one rank of a clean 0.7 s
    # Trainer run took 40% more CPU for the same work over 20 steps: 80 ms) is not a
    # rank to go and see, while a fault worth seeing costs more within seconds of a
    # real job (a rank 5% slower in 1 s steps: 50 ms a step).
    min_warning_lost_s: float = 0.25
    cpu_wait_excess_s_per_s: float = 0.15  # run-queue wait beyond the other ranks'
    cpu_excess_s_per_s: float = 0.05  # CPU time beyond the other ranks', for slow_compute
    # A rank whose process the node agent saw stopped (collectives/stops.py) this share of
    # the time or more, while its peers were stopped a quarter as much or less, stopped
    # the job with it, in or out of collectives.
    stopped_min_s_per_s: float = 0.01
    stopped_peers_ratio: float = 0.25
    # Job-wide stalls (analyzers/job_stalls.py): steps in which even the rank with the
    # least own work took this much longer than its typical step (a step's worth, and at
    # least job_stall_min_s), at least this many times, costing this share of the run.
    job_stall_of_step_ratio: float = 1.0
    job_stall_min_s: float = 0.02
    job_stall_min_events: int = 3
    job_stall_min_share_of_run: float = 0.05
    # On a host where every rank waits for a CPU, an unexplained straggler costing less
    # than this share of the run is told as the host's contention, not as the rank's fault
    contended_host_fold_lost_ratio: float = 0.10
    # A cause is named only when its signal (extra DataLoader wait, extra run-queue wait
    # per step) beyond the peers' accounts for at least this share of the lateness.
    cause_explains_lateness_ratio: float = 0.5
    # A rank whose thread waits for a CPU more per second of CPU than its peers, by this
    # factor, and whose extra wait is this share of its lateness, shares its core: the
    # co-tenant also inflates its CPU time (caches, a busy sibling hyperthread), so more
    # CPU there is not heavier work.
    contention_wait_per_cpu_ratio: float = 1.25
    contention_min_share_of_lateness: float = 0.25
    # Contention is the cgroup's CPU limit (cpu_throttled) where the time the limit held
    # the rank's process, beyond its peers', is at least this share of its extra
    # run-queue wait: a throttled cgroup's threads wait in the run queue for the next
    # period, with no other process on the CPU.
    throttled_share_of_wait_ratio: float = 0.5
    # A job whose ranks (half of them or more) were held by their cgroups' CPU limit for
    # this share of their steps is told so (idle_compute/cpu_throttled)
    cpu_limit_held_of_step_ratio: float = 0.05
    # ... and fewer ranks so held are stragglers where their peers were held for at most
    # this share of theirs
    cpu_limit_peers_held_ratio: float = 0.25
    # An episode with no rhythm and no span (now and then) warns only when each time it
    # holds the others up by this share of a step: smaller hiccups on one rank are a busy
    # process's jitter (rank 0 drawing a progress bar), told as info.
    intermittent_min_lateness_of_step_ratio: float = 0.3
    min_lateness_s: float = 1e-4  # below this no lateness is told from timer noise
    throttled_share_ratio: float = 0.2  # of GPU samples; and this much above the peers' GPUs
    clock_uncertainty_factor: float = 3.0  # across hosts, lateness must exceed this x bound

    # Pipeline stages (analyzers/pipeline.py)
    stage_imbalance_ratio: float = 1.5  # a stage's own work over the other stages' median

    # Slowdowns (analyzers/slowdown.py)
    slowdown_min_ratio: float = 1.15
    slowdown_critical_ratio: float = 1.5
    slowdown_min_side_steps: int = 5
    slowdown_sigmas: float = 4.0  # the shift of medians against its standard error
    slowdown_step_sigmas: float = 2.0  # the shift against the noise of single steps
    slowdown_broad_ratio: float = 0.75  # share of ranks whose own work grew: job-wide
    # host_contention: the threads waited more for a CPU while their CPU per step grew
    # by less than this share of that (more work beside a steady co-tenant grows both
    # alike; one arriving: wait +40 ms, CPU +0.5 ms)
    slowdown_contention_cpu_share: float = 0.25

    # Live analysis (agent/live.py)
    live_window_steps: int = 60  # the recent steps each live analysis looks at
    live_end_after_s: float = 6.0  # a finding absent this long has ended
    # at the job's end, how long the analysing agent waits for the other nodes' last
    # records, and they for it to read them
    live_drain_s: float = 10.0
    live_line_every_s: float = 30.0  # at most one line per finding on stderr in this time
    hang_after_s: float = 60.0  # ranks waiting this long for others that never came
    live_samples_s: float = 120.0  # node samples (GPU, host, fabric) the analysis keeps

    # Idle compute (analyzers/idle.py)
    idle_wait_info_ratio: float = 0.10  # of step time waiting for peers: worth a line
    # Efficiency findings (info, "Where the time goes"): told from these shares on.
    data_wait_info_ratio: float = 0.10  # of step time in the DataLoader, on most ranks
    gpu_idle_info_ratio: float = 0.50  # mean GPU utilization of a node below this

    # Interconnect (analyzers/interconnect.py)
    slow_group_ratio: float = 0.5  # below half the best comparable group's bandwidth
    slow_host_critical_ratio: float = 0.2
    low_of_expected_ratio: float = 0.5
    exposed_info_ratio: float = 0.30  # of step time in transfers nothing overlaps
    min_instances: int = 5
    min_bandwidth_bytes: int = 64 << 10  # smaller messages measure latency, not bandwidth

    # Fabric counters and link rates (analyzers/fabric.py, link_rates.py)
    slow_step_ratio: float = 1.3  # a step this much slower than the median is a slow stretch
    counter_before_stretch_s: float = 2.0  # a counter that moved this soon before one counts
    degraded_link_ratio: float = 0.75  # below this share of the usual rate
    used_link_bytes: int = 1 << 20  # a port that sent less during the run carried no job


DEFAULTS = Settings()
