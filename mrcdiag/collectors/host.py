"""Host collector: CPU, load, memory, NICs and disks (psutil), and CPU wait of rank processes.

Run-queue wait per rank comes from /proc/PID/task/*/schedstat (second field: ns spent
runnable but not running), summed over the rank's threads: the direct sign that the
rank shares its cores with something else. A thread that ends takes its schedstat with
it, so the collector keeps each thread's last value: the counter never goes back (a
DataLoader or gloo thread ending made the run-queue wait of a rank fall by up to a
tenth of a second before, read as a negative rate).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import psutil

from mrcdiag import metrics
from mrcdiag.collectors.base import Sample, SampleCollector
from mrcdiag.collectors.stops import StopWatch

RankProcess = tuple[int, int, int]  # (rank, local_rank, pid)


def read_schedstat_waits_ns(pid: int, proc_root: Path = Path("/proc")) -> dict[str, int] | None:
    """Per thread of `pid`, ns it waited for a CPU; None if the process is gone."""
    waits: dict[str, int] = {}
    try:
        tasks = list((proc_root / str(pid) / "task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            fields = (task / "schedstat").read_text().split()
            waits[task.name] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    return waits


class ThreadCounter:
    """A per-process total over its threads that does not fall when a thread ends."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.ended_ns = 0

    def total_ns(self, now: dict[str, int]) -> int:
        for tid in set(self.last) - set(now):
            self.ended_ns += self.last.pop(tid)
        self.last.update(now)
        return self.ended_ns + sum(self.last.values())


class HostCollector(SampleCollector):
    def __init__(
        self,
        common_labels: dict[str, str],
        rank_processes: Callable[[], list[RankProcess]] = list,
        proc_root: Path = Path("/proc"),
        watch_stops: bool = False,
    ) -> None:
        super().__init__(common_labels)
        self.rank_processes = rank_processes
        self.proc_root = proc_root
        # the node agent's: a thread reading the ranks' states (collectors/stops.py)
        self.stops: StopWatch | None = None
        if watch_stops:
            self.stops = StopWatch(proc_root=proc_root).start()
        psutil.cpu_percent(percpu=True)  # prime: the first call has no interval behind it
        self._procs: dict[int, psutil.Process] = {}
        self._waits: dict[int, ThreadCounter] = {}  # pid -> its run-queue wait

    def read(self) -> list[Sample]:
        out: list[Sample] = []
        for cpu, pct in enumerate(psutil.cpu_percent(percpu=True)):
            out.append(
                Sample(
                    "mrcdiag_host_cpu_utilization_ratio",
                    pct / 100.0,
                    (("cpu", str(cpu)),),
                    help="Busy fraction of each logical CPU",
                )
            )
        for period, value in zip(("1m", "5m", "15m"), os.getloadavg(), strict=True):
            out.append(
                Sample(
                    "mrcdiag_host_load_average",
                    value,
                    (("period", period),),
                    help="Run-queue length averaged over the period",
                )
            )
        vm, swap = psutil.virtual_memory(), psutil.swap_memory()
        out += [
            Sample(
                "mrcdiag_host_memory_used_bytes",
                vm.total - vm.available,
                help="Memory in use (total - available)",
            ),
            Sample("mrcdiag_host_memory_total_bytes", vm.total, help="Physical memory"),
            Sample("mrcdiag_host_swap_used_bytes", swap.used, help="Swap in use"),
        ]
        out += self._nics() + self._disks() + self._ranks()
        return out

    def close(self) -> None:
        if self.stops is not None:
            self.stops.stop()

    def _nics(self) -> list[Sample]:
        out = []
        counters = psutil.net_io_counters(pernic=True)
        try:
            stats = psutil.net_if_stats()
        except OSError:
            stats = {}
        for nic, c in sorted(counters.items()):
            if nic == "lo":
                continue
            labels = (("nic", nic),)
            speed_mbit = getattr(stats.get(nic), "speed", 0)
            if speed_mbit > 0:  # 0: the driver does not say (virtual NICs, some drivers)
                out.append(
                    Sample(
                        "mrcdiag_host_network_speed_bytes_per_second",
                        speed_mbit * 1e6 / 8,
                        labels,
                        help="Negotiated link speed",
                    )
                )
            for name, value, doc in (
                ("receive_bytes", c.bytes_recv, "Bytes received"),
                ("transmit_bytes", c.bytes_sent, "Bytes sent"),
                ("receive_errors", c.errin, "Receive errors"),
                ("transmit_errors", c.errout, "Transmit errors"),
                ("receive_drops", c.dropin, "Received packets dropped"),
                ("transmit_drops", c.dropout, "Sent packets dropped"),
            ):
                out.append(
                    Sample(f"mrcdiag_host_network_{name}_total", value, labels, "counter", doc)
                )
        return out

    def _disks(self) -> list[Sample]:
        out = []
        try:
            counters = psutil.disk_io_counters(perdisk=True) or {}
        except (OSError, RuntimeError):
            return out
        for disk, c in sorted(counters.items()):
            labels = (("disk", disk),)
            out.append(
                Sample(
                    "mrcdiag_host_disk_read_bytes_total",
                    c.read_bytes,
                    labels,
                    "counter",
                    "Bytes read",
                )
            )
            out.append(
                Sample(
                    "mrcdiag_host_disk_written_bytes_total",
                    c.write_bytes,
                    labels,
                    "counter",
                    "Bytes written",
                )
            )
        return out

    def _ranks(self) -> list[Sample]:
        out = []
        processes = self.rank_processes()
        if self.stops is not None:
            self.stops.watch([pid for _, _, pid in processes if pid > 0])
        for rank, local_rank, pid in processes:
            labels = (("rank", str(rank)), ("local_rank", str(local_rank)))
            try:
                proc = self._procs.get(pid) or psutil.Process(pid)
                self._procs[pid] = proc
                times = proc.cpu_times()
                cpu_s = times.user + times.system
            except (psutil.Error, OSError):
                self._procs.pop(pid, None)
                self._waits.pop(pid, None)
                continue
            out.append(
                Sample(
                    "mrcdiag_rank_cpu_seconds_total",
                    cpu_s,
                    labels,
                    "counter",
                    "CPU time used by the rank's process",
                )
            )
            stopped_s = self.stops.stopped_s(pid) if self.stops is not None else None
            if stopped_s is not None:
                out.append(
                    Sample(
                        metrics.RANK_STOPPED,
                        stopped_s,
                        labels,
                        "counter",
                        "Time the rank's process was seen stopped (SIGSTOP, a suspend)",
                    )
                )
            waits = read_schedstat_waits_ns(pid, self.proc_root)
            if waits is not None:
                counter = self._waits.setdefault(pid, ThreadCounter())
                out.append(
                    Sample(
                        "mrcdiag_rank_cpu_wait_seconds_total",
                        counter.total_ns(waits) / 1e9,
                        labels,
                        "counter",
                        "Time the rank's threads were runnable but waited for a CPU",
                    )
                )
        return out
