"""The node agent's count of the time each rank's process was stopped
(collectors/stops.py), on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from mrcdiag import metrics
from mrcdiag.collectors.host import HostCollector
from mrcdiag.collectors.stops import SAMPLE_INTERVAL_S, StopWatch, process_state


def test_the_state_follows_the_last_parenthesis_of_the_command_name(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "stat").write_text("42 (python (rank 0)) T 1 42 42 0 -1\n")
    assert process_state(42, tmp_path) == "T"
    assert process_state(43, tmp_path) is None  # gone


def test_a_process_stopped_and_continued_is_counted_for_as_long_as_it_was_stopped() -> None:
    child = subprocess.Popen(["sleep", "60"])
    watch = StopWatch().start()
    watch.watch([child.pid])
    try:
        deadline = time.monotonic() + 10
        while watch.stopped_s(child.pid) is None:  # read once: counted from here
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert watch.stopped_s(child.pid) == 0.0
        stopped_s = 0.0
        for _ in range(3):
            began = time.monotonic()
            os.kill(child.pid, signal.SIGSTOP)
            time.sleep(0.3)
            os.kill(child.pid, signal.SIGCONT)
            stopped_s += time.monotonic() - began
            time.sleep(0.2)
        seen = watch.stopped_s(child.pid)
        assert seen is not None
        # each edge of a stop is known to within one reading, but readings a
        # busy machine delays are not credited: never more than was stopped, most of it
        assert 0.6 * stopped_s <= seen <= stopped_s + 6 * SAMPLE_INTERVAL_S, (seen, stopped_s)
    finally:
        watch.stop()
        child.kill()
        child.wait()


def test_the_host_collector_serves_each_ranks_stopped_seconds() -> None:
    child = subprocess.Popen(["sleep", "60"])
    host = HostCollector({"job": "j"}, lambda: [(5, 1, child.pid)], watch_stops=True)
    try:
        deadline = time.monotonic() + 10
        host.read()  # the ranks to watch
        while host.stops is not None and host.stops.stopped_s(child.pid) is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (sample,) = [s for s in host.read() if s.name == metrics.RANK_STOPPED]
        assert dict(sample.labels) == {"rank": "5", "local_rank": "1"}
        assert sample.kind == "counter" and sample.value == 0.0
    finally:
        host.close()
        child.kill()
        child.wait()


def test_stops_on_a_period_of_their_own_are_seen_for_their_share_of_the_time() -> None:
    # SIGSTOP 40 ms of every 100 ms: read every 100 ms on the dot, the readings could
    # keep falling at one phase of the cycle (always between stops, or always in them)
    child = subprocess.Popen(["sleep", "60"])
    watch = StopWatch().start()
    watch.watch([child.pid])
    try:
        began = time.monotonic()
        while time.monotonic() - began < 6.0:
            os.kill(child.pid, signal.SIGSTOP)
            time.sleep(0.04)
            os.kill(child.pid, signal.SIGCONT)
            time.sleep(0.06)
        share = (watch.stopped_s(child.pid) or 0.0) / (time.monotonic() - began)
        assert 0.2 <= share <= 0.6, share
    finally:
        watch.stop()
        child.kill()
        child.wait()
