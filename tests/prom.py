"""A real Prometheus server (Debian's package) on 127.0.0.1, for integration tests."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        rule_files: list[Path] | None = None,
        interval: str = "1s",
    ) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("prometheus is not installed (apt-get install -y prometheus)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        rules = "".join(f"\n  - {p}" for p in rule_files or [])
        config.write_text(
            f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
            + (f"rule_files:{rules}\n" if rules else "")
            + "scrape_configs:\n  - job_name: mrcdiag\n    honor_labels: true\n"
            f"    static_configs:\n      - targets: {json.dumps(targets)}\n"
        )
        self.log = open(workdir / "prometheus.log", "w")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.wait_until(lambda: self._get("/-/ready") is not None, 30, "Prometheus to start")

    def _get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as r:
                return r.read()
        except OSError:
            return None

    def query(self, promql: str) -> list[dict]:
        body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        if body is None:
            return []
        data = json.loads(body)
        assert data["status"] == "success", data
        return data["data"]["result"]

    def wait_until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.process.returncode}")
            if predicate():
                return
            time.sleep(0.2)  # polling a condition with a deadline, not a stand-in for sync
        raise AssertionError(f"timed out waiting for {what}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
