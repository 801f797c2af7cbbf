"""The catalogue of metric names and label keys: what the node agent serves and stores.

Collectors write these names, analyzers read them back from the run directory,
dashboards and alert rules query them; tests/test_metric_catalogue.py checks that every
name a collector emits, a dashboard panel queries or an alert rule uses is listed here.
Names follow Prometheus: prefix `mrcdiag_`, base units, `_total` for counters (as stored;
on /metrics a counter family is named without it and served with it).
"""

from __future__ import annotations

import numpy as np

PREFIX = "mrcdiag_"

# Label keys
JOB, NODE, RANK, LOCAL_RANK, GPU, OP, SIZE, GROUP, REASON = (
    "job",
    "node",
    "rank",
    "local_rank",
    "gpu",
    "op",
    "size",
    "group",
    "reason",
)

# Per rank, from the ranks' own records (collectors/ranks.py)
STEP_DURATION = "mrcdiag_step_duration_seconds"  # histogram
STEPS = "mrcdiag_steps_total"
LAST_STEP_TIMESTAMP = "mrcdiag_last_step_timestamp_seconds"
DATA_WAIT = "mrcdiag_data_wait_seconds_total"
COLLECTIVE_BLOCKED = "mrcdiag_collective_blocked_seconds_total"
COLLECTIVE_DURATION = "mrcdiag_collective_duration_seconds"  # histogram per op and size
COLLECTIVE_BYTES = "mrcdiag_collective_bytes_total"
AGENT_UP = "mrcdiag_agent_up"
# the rank's device allocator at its last step (torch.cuda.memory_stats)
RANK_MEMORY_ALLOCATED = "mrcdiag_rank_memory_allocated_bytes"
RANK_MEMORY_RESERVED = "mrcdiag_rank_memory_reserved_bytes"
RANK_MEMORY_PEAK_ALLOCATED = "mrcdiag_rank_memory_peak_allocated_bytes"
RANK_MEMORY_PEAK_RESERVED = "mrcdiag_rank_memory_peak_reserved_bytes"
RANK_MEMORY_TOTAL = "mrcdiag_rank_memory_total_bytes"  # its device's
RANK_MEMORY_ALLOC_RETRIES = "mrcdiag_rank_memory_alloc_retries_total"
RANK_MEMORY_OOMS = "mrcdiag_rank_memory_ooms_total"
# The live analysis (agent/live.py): one series per active finding and blamed rank
KIND, CAUSE, SEVERITY = "kind", "cause", "severity"
FINDING_ACTIVE = "mrcdiag_finding_active"  # 1 while active, 0 for a while after it ended
FINDING_TIME_LOST = "mrcdiag_finding_time_lost_seconds_total"
LIVE_ANALYSIS_SECONDS = "mrcdiag_live_analysis_seconds_total"  # the analysis's own cost
LIVE_NEWEST_STEP = "mrcdiag_live_newest_step"  # the newest step every rank has ended
AGENT_SCRAPE_TIMESTAMP = "mrcdiag_agent_scrape_timestamp_seconds"

# GPUs (collectors/nvml.py, collectors/amd.py)
GPU_UP = "mrcdiag_gpu_up"
GPU_RANK_INFO = "mrcdiag_gpu_rank_info"
GPU_UTILIZATION = "mrcdiag_gpu_utilization_ratio"
GPU_MEMORY_BANDWIDTH_UTILIZATION = "mrcdiag_gpu_memory_bandwidth_utilization_ratio"
GPU_SM_ACTIVITY = "mrcdiag_gpu_sm_activity_ratio"
GPU_TENSOR_ACTIVITY = "mrcdiag_gpu_tensor_activity_ratio"
GPU_MEMORY_USED = "mrcdiag_gpu_memory_used_bytes"
GPU_MEMORY_TOTAL = "mrcdiag_gpu_memory_total_bytes"
GPU_SM_CLOCK = "mrcdiag_gpu_sm_clock_hertz"
GPU_SM_CLOCK_MAX = "mrcdiag_gpu_sm_clock_max_hertz"
GPU_CLOCK_EVENT_ACTIVE = "mrcdiag_gpu_clock_event_active"  # label reason
GPU_POWER = "mrcdiag_gpu_power_watts"
GPU_POWER_LIMIT = "mrcdiag_gpu_power_limit_watts"
GPU_TEMPERATURE = "mrcdiag_gpu_temperature_celsius"
GPU_ECC_ERRORS = "mrcdiag_gpu_ecc_errors_total"
GPU_XID_ERRORS = "mrcdiag_gpu_xid_errors_total"
GPU_PCIE_TRANSMIT_RATE = "mrcdiag_gpu_pcie_transmit_bytes_per_second"
GPU_PCIE_RECEIVE_RATE = "mrcdiag_gpu_pcie_receive_bytes_per_second"
GPU_PCIE_LINK_GENERATION = "mrcdiag_gpu_pcie_link_generation"  # as trained now
GPU_PCIE_LINK_GENERATION_MAX = "mrcdiag_gpu_pcie_link_generation_max"
GPU_PCIE_LINK_WIDTH = "mrcdiag_gpu_pcie_link_width"  # lanes, now
GPU_PCIE_LINK_WIDTH_MAX = "mrcdiag_gpu_pcie_link_width_max"
GPU_NVLINK_TRANSMIT_RATE = "mrcdiag_gpu_nvlink_transmit_bytes_per_second"
GPU_NVLINK_RECEIVE_RATE = "mrcdiag_gpu_nvlink_receive_bytes_per_second"
GPU_NVLINK_TRANSMIT_BYTES = "mrcdiag_gpu_nvlink_transmit_bytes_total"
GPU_NVLINK_RECEIVE_BYTES = "mrcdiag_gpu_nvlink_receive_bytes_total"
GPU_XGMI_TRANSMIT_BYTES = "mrcdiag_gpu_xgmi_transmit_bytes_total"
GPU_XGMI_RECEIVE_BYTES = "mrcdiag_gpu_xgmi_receive_bytes_total"

# The host (collectors/host.py)
HOST_CPU_UTILIZATION = "mrcdiag_host_cpu_utilization_ratio"
HOST_LOAD_AVERAGE = "mrcdiag_host_load_average"
HOST_MEMORY_USED = "mrcdiag_host_memory_used_bytes"
HOST_MEMORY_TOTAL = "mrcdiag_host_memory_total_bytes"
HOST_SWAP_USED = "mrcdiag_host_swap_used_bytes"
HOST_DISK_READ_BYTES = "mrcdiag_host_disk_read_bytes_total"
HOST_DISK_WRITTEN_BYTES = "mrcdiag_host_disk_written_bytes_total"
HOST_NETWORK_RECEIVE_BYTES = "mrcdiag_host_network_receive_bytes_total"
HOST_NETWORK_TRANSMIT_BYTES = "mrcdiag_host_network_transmit_bytes_total"
HOST_NETWORK_RECEIVE_ERRORS = "mrcdiag_host_network_receive_errors_total"
HOST_NETWORK_TRANSMIT_ERRORS = "mrcdiag_host_network_transmit_errors_total"
HOST_NETWORK_RECEIVE_DROPS = "mrcdiag_host_network_receive_drops_total"
HOST_NETWORK_TRANSMIT_DROPS = "mrcdiag_host_network_transmit_drops_total"
HOST_NETWORK_SPEED = "mrcdiag_host_network_speed_bytes_per_second"
RANK_CPU = "mrcdiag_rank_cpu_seconds_total"
RANK_CPU_WAIT = "mrcdiag_rank_cpu_wait_seconds_total"  # run-queue wait (schedstat)
RANK_STOPPED = "mrcdiag_rank_stopped_seconds_total"  # seen in state T (collectors/stops.py)

# InfiniBand and RoCE ports (collectors/infiniband.py)
FABRIC_PORT_TRANSMIT_BYTES = "mrcdiag_fabric_port_transmit_bytes_total"
FABRIC_PORT_RECEIVE_BYTES = "mrcdiag_fabric_port_receive_bytes_total"
FABRIC_PORT_TRANSMIT_PACKETS = "mrcdiag_fabric_port_transmit_packets_total"
FABRIC_PORT_RECEIVE_PACKETS = "mrcdiag_fabric_port_receive_packets_total"
FABRIC_PORT_TRANSMIT_WAIT = "mrcdiag_fabric_port_transmit_wait_total"
FABRIC_PORT_ERRORS = "mrcdiag_fabric_port_errors_total"  # label counter
FABRIC_PORT_LINK_DOWNED = "mrcdiag_fabric_port_link_downed_total"
FABRIC_HW_COUNTER = "mrcdiag_fabric_hw_counter_total"  # label counter
FABRIC_PORT_UP = "mrcdiag_fabric_port_up"
FABRIC_PORT_PHYSICAL_UP = "mrcdiag_fabric_port_physical_up"
FABRIC_PORT_RATE = "mrcdiag_fabric_port_rate_bytes_per_second"

CATALOGUE: frozenset[str] = frozenset(
    value
    for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, str) and value.startswith(PREFIX) and value != PREFIX
)

# Clock-event reasons that hold a GPU's clocks down for heat or power. A GPU at full load
# often sits at its power cap (sw_power_cap) as a matter of course, so the cap counts only
# against the node's other GPUs (the straggler analysis compares with its peers; the
# dashboards show it); an alert with no peers to compare fires on the others alone.
THROTTLE_REASONS: tuple[str, ...] = (
    "sw_thermal",
    "hw_thermal",
    "sw_power_cap",
    "hw_power_brake",
    "hw_slowdown",
    "amd_throttle",
)
ALERTING_THROTTLE_REASONS: tuple[str, ...] = tuple(
    r for r in THROTTLE_REASONS if r != "sw_power_cap"
)

# Message-size buckets of the collective histograms (label `size`) and of the analysis.
SIZE_EDGES_BYTES = (4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20)
SIZE_LABELS = ("4KiB", "64KiB", "1MiB", "16MiB", "256MiB", "inf")


def size_bucket(nbytes: np.ndarray) -> np.ndarray:
    """Index into SIZE_LABELS of each message size."""
    return np.searchsorted(np.array(SIZE_EDGES_BYTES), nbytes, side="left")
