"""How long the process's cgroup was throttled by its CPU limit, read at each step boundary.

A CPU limit (Kubernetes `resources.limits.cpu`, `docker --cpus`, systemd `CPUQuota=`)
lets the threads of a cgroup run for `quota` out of every `period` (CFS bandwidth
control); once they have, every one of them is held until the next period. Schedstat
counts that hold as time in a run queue, so without this a throttled rank reads as one
whose cores are busy with another process, and the advice (find the other process) is
wrong: nothing else holds the CPU, the limit does. The kernel counts the held time per
cgroup in `cpu.stat`: `throttled_usec` (cgroup v2), `throttled_time` in ns (v1). The
limit may be the process's own cgroup's or one above it (a Kubernetes pod's), so each
level up to the hierarchy's root that has a limit is read, and the largest growth counts.
Which cgroup the process is in, and which levels have a limit, is looked at again every
100 ms (a process moved into another cgroup, a limit set or resized while it runs): a
limit that begins to bite is counted from within a tenth of a second, not missed for
a second's worth of steps.

The kernel adds up the held time per CPU the cgroup was held on, so a cgroup with
several busy threads (a rank's, its peers' in the same pod) counts more than the wall
time per period; the analyzers take no more of it as a rank's than its thread was off
the CPU in that step.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

UNKNOWN = -1
RECHECK_NS = 100_000_000  # about 35 us each: /proc/self/cgroup and the limits (0.035%)


def _membership() -> tuple[str | None, str | None]:
    """This process's cgroup path in the v1 hierarchy with the cpu controller, and in
    the v2 hierarchy (None where it has none)."""
    v1_path = v2_path = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        elif "cpu" in parts[1].split(","):
            v1_path = parts[2]
    return v1_path, v2_path


def cpu_mount(v1: bool) -> tuple[Path, str] | None:
    """Where the hierarchy with the cpu controller is mounted (v1: the cgroup mount that
    has it; v2: the cgroup2 mount), and the cgroup path that mount shows as its root."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        after = line.split(" - ", 1)[1].split() if " - " in line else []
        if len(fields) < 5 or len(after) < 3:
            continue
        fstype, options = after[0], after[2].split(",")
        if (v1 and fstype == "cgroup" and "cpu" in options) or (not v1 and fstype == "cgroup2"):
            return Path(fields[4]), fields[3]
    return None


def _relative(path: str, root: str) -> str:
    """The cgroup path below the mount (inside a container the mount's root is the
    container's own cgroup, and /proc/self/cgroup may name it from the host's root)."""
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return path.strip("/")


def _has_limit(directory: Path, v2: bool) -> bool:
    try:
        if v2:
            return (directory / "cpu.max").read_text().split()[0] != "max"
        return int((directory / "cpu.cfs_quota_us").read_text()) > 0
    except (OSError, ValueError, IndexError):
        return False


def limited_levels(
    mounts: dict[bool, tuple[Path, str] | None] | None = None,
) -> tuple[list[Path], bool] | None:
    """The cpu.stat files of the process's cgroup and those above it that have a CPU
    limit (none: nothing limits it), and whether they are v2; None where the cgroups
    cannot be read. `mounts` keeps cpu_mount's answers between calls (mounts do not move
    under a running process; its cgroup and the limits may)."""
    v1_path, v2_path = _membership()
    v1 = v1_path is not None
    path = v1_path if v1 else v2_path
    if path is None:
        return None
    mounts = {} if mounts is None else mounts
    if v1 not in mounts:
        mounts[v1] = cpu_mount(v1)
    found = mounts[v1]
    if found is None:
        return None
    mount, root = found
    relative = _relative(path, root)
    directory = mount / relative if relative else mount
    if not directory.is_dir():
        return None
    levels = []
    while True:
        if _has_limit(directory, not v1):
            levels.append(directory / "cpu.stat")
        if directory == mount or mount not in directory.parents:
            break
        directory = directory.parent
    return levels, not v1


class CgroupThrottle:
    """`since_last()` -> ns the process's cgroup (or one above it) was held by its CPU
    limit since the previous call (the largest over the limited levels), 0 where no
    level has a limit, UNKNOWN where the cgroups cannot be read."""

    def __init__(self) -> None:
        self._files: dict[Path, int] = {}  # cpu.stat -> its open descriptor
        self._last: dict[Path, int] = {}
        self._v2 = False
        self._readable = True
        self._checked_ns = 0
        self._mounts: dict[bool, tuple[Path, str] | None] = {}

    def since_last(self) -> int:
        if not self._readable:
            return UNKNOWN
        try:
            return self._since_last()
        except Exception:  # a cgroup file in a shape not foreseen: not known from here on
            self._readable = False
            self.close()
            return UNKNOWN

    def _since_last(self) -> int:
        now = time.monotonic_ns()
        if now - self._checked_ns >= RECHECK_NS:
            self._checked_ns = now
            self._recheck()
            if not self._readable:
                return UNKNOWN
        grown = 0
        for path, fd in self._files.items():
            total = self._read(fd)
            if total is None:
                continue
            grown = max(grown, total - self._last.get(path, total))
            self._last[path] = total
        return grown

    def _recheck(self) -> None:
        found = limited_levels(self._mounts)
        if found is None:
            self._readable = False
            self.close()
            return
        paths, self._v2 = found
        for path in set(self._files) - set(paths):
            os.close(self._files.pop(path))
            self._last.pop(path, None)
        for path in paths:
            if path in self._files:
                continue
            try:
                self._files[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            total = self._read(self._files[path])
            if total is not None:
                self._last[path] = total  # counts from when it was first seen

    def _read(self, fd: int) -> int | None:
        try:
            text = os.pread(fd, 4096, 0).decode()
        except OSError:
            return None
        key = "throttled_usec" if self._v2 else "throttled_time"
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value) * (1000 if self._v2 else 1)
        return None

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
        self._last.clear()
