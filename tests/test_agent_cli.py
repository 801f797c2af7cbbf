"""`mrcdiag agent` and `launch`: a port in use and a bad interval are one clear line."""

from __future__ import annotations

import socket
from pathlib import Path

from conftest import mrcdiag


def test_agent_on_a_port_in_use_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = mrcdiag("agent", "--port", str(port), "--addr", "127.0.0.1", timeout=30)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert (
        lines[-1].startswith("Error: cannot listen on 127.0.0.1:") and "Pick another" in lines[-1]
    )


def test_agent_with_a_bad_interval_is_a_usage_error() -> None:
    proc = mrcdiag("agent", "--interval", "0", timeout=30)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Invalid value for '--interval'" in proc.stderr


def test_launch_without_a_command_is_a_usage_error() -> None:
    proc = mrcdiag("launch", timeout=30)
    assert proc.returncode == 2 and "Missing argument" in proc.stderr


def test_launch_of_a_missing_program_is_one_line(tmp_path: Path) -> None:
    proc = mrcdiag("launch", "--run-dir", str(tmp_path / "r"), "--", "no-such-torchrun")
    assert proc.returncode == 1 and "command not found: 'no-such-torchrun'" in proc.stderr


def test_rank_cpu_wait_never_falls_when_a_thread_ends(tmp_path: Path) -> None:
    from mrcdiag.collectors.host import ThreadCounter, read_schedstat_waits_ns

    task = tmp_path / "4242" / "task"

    def threads(waits: dict[str, int]) -> dict[str, int] | None:
        for tid in list(task.iterdir()) if task.exists() else []:
            if tid.name not in waits:  # the thread ended
                (tid / "schedstat").unlink()
                tid.rmdir()
        for tid, ns in waits.items():
            (task / tid).mkdir(parents=True, exist_ok=True)
            (task / tid / "schedstat").write_text(f"1000 {ns} 3\n")
        return read_schedstat_waits_ns(4242, tmp_path)

    counter = ThreadCounter()
    totals = [
        counter.total_ns(threads(waits))
        for waits in ({"4242": 100, "4243": 900}, {"4242": 150}, {"4242": 160, "4250": 40})
    ]
    assert totals == [1000, 1050, 1100]  # the ended thread's 900 ns stay counted
