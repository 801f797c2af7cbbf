"""A CPU-limited cgroup for tests, as a container's CPU limit is (Kubernetes
resources.limits.cpu, docker --cpus): cgroup v1's cpu controller or cgroup v2's cpu.max.
Needs root and a writable cgroup hierarchy; `limited_cgroup` is None without them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from mrcdiag.capture.cgroup_cpu import cpu_mount


class LimitedCgroup:
    def __init__(self, directory: Path, v2: bool) -> None:
        self.directory = directory
        self.v2 = v2

    def add(self, pid: int) -> None:
        """Move a process (all its threads) into the cgroup."""
        (self.directory / "cgroup.procs").write_text(str(pid))

    def throttled_ns(self) -> int:
        stat = dict(line.split() for line in (self.directory / "cpu.stat").read_text().splitlines())
        return int(stat["throttled_usec"]) * 1000 if self.v2 else int(stat["throttled_time"])


def _create(name: str, quota_ms: int, period_ms: int) -> LimitedCgroup | None:
    for v1 in (True, False):
        found = cpu_mount(v1)
        if found is None:
            continue
        mount = found[0]
        directory = mount / name
        try:
            if not v1:
                (mount / "cgroup.subtree_control").write_text("+cpu")
            directory.mkdir()
            if v1:
                (directory / "cpu.cfs_period_us").write_text(str(period_ms * 1000))
                (directory / "cpu.cfs_quota_us").write_text(str(quota_ms * 1000))
            else:
                (directory / "cpu.max").write_text(f"{quota_ms * 1000} {period_ms * 1000}")
        except OSError:
            with contextlib.suppress(OSError):
                directory.rmdir()
            continue
        return LimitedCgroup(directory, not v1)
    return None


@contextlib.contextmanager
def limited_cgroup(quota_ms: int, period_ms: int = 100) -> Iterator[LimitedCgroup | None]:
    """A new cgroup whose processes may run `quota_ms` of every `period_ms`, removed
    afterwards (its processes must have ended or been moved out by then)."""
    group = _create(f"mrcdiag-test-{os.getpid()}", quota_ms, period_ms)
    try:
        yield group
    finally:
        if group is not None:
            for pid in (group.directory / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):  # back to the hierarchy's root
                    (group.directory.parent / "cgroup.procs").write_text(pid)
            with contextlib.suppress(OSError):
                group.directory.rmdir()
