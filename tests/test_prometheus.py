"""A real Prometheus scrapes the node agent while a real 2-rank job runs under launch."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import REPO, job_env, launch_command, torchrun
from prom import Prometheus, free_port

pytestmark = pytest.mark.slow


def test_prometheus_sees_rank_step_collective_and_host_series(tmp_path: Path) -> None:
    port = free_port()
    prom = Prometheus(tmp_path, [f"127.0.0.1:{port}"])
    job = None
    try:
        job = subprocess.Popen(
            launch_command(
                tmp_path / "run",
                torchrun(2, ["-m", "mrcdiag.demo_job", "--steps", "2000", "--work-ms", "5"]),
                port=port,
                extra=["--job", "promtest", "--interval", "0.5"],
            ),
            env=job_env(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        def have(q: str, n: int = 1):
            return lambda: len(prom.query(q)) >= n

        prom.wait_until(have('mrcdiag_steps_total{job="promtest"} > 0', 2), 90, "step series")
        prom.wait_until(
            have(
                'sum by (rank, op) (mrcdiag_collective_duration_seconds_count{job="promtest"}) > 0',
                2,
            ),
            30,
            "collective histograms",
        )
        median = (
            "histogram_quantile(0.5, sum by (rank, le) "
            '(rate(mrcdiag_step_duration_seconds_bucket{job="promtest"}[5s])))'
        )
        prom.wait_until(have(median, 2), 30, "step time quantiles of both ranks")
        steps = prom.query(median)
        assert {r["metric"]["rank"] for r in steps} == {"0", "1"}
        assert all(0 < float(r["value"][1]) < 5 for r in steps)
        ops = prom.query('sum by (op) (mrcdiag_collective_bytes_total{job="promtest"})')
        assert "all_reduce" in {r["metric"]["op"] for r in ops}
        host = prom.query('mrcdiag_host_cpu_utilization_ratio{job="promtest"}')
        assert host and all(r["metric"]["node"] for r in host)
        assert prom.query('mrcdiag_rank_cpu_seconds_total{job="promtest"}')
    finally:
        if job is not None:
            job.terminate()
            job.wait(timeout=60)
        prom.stop()
