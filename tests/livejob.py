"""A job under `mrcdiag launch` watched while it runs: its stderr lines and its /metrics,
each stamped with when the test saw it."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from conftest import REPO, job_env, launch_command, torchrun

_SERIES = re.compile(r"^(\w+)\{(.*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class Seen:
    t_unix_s: float
    text: str


@dataclass
class ActiveSeries:
    t_unix_s: float
    labels: dict[str, str]


@dataclass
class LiveJob:
    run_dir: Path
    process: subprocess.Popen
    lines: list[Seen] = field(default_factory=list)
    active: list[ActiveSeries] = field(default_factory=list)  # finding_active == 1
    url: str | None = None
    newest_step: int = -1  # the newest step the live analysis had judged, per /metrics
    _done: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(
        cls, run_dir: Path, nproc: int, target: list[str], extra: list[str] | None = None
    ) -> LiveJob:
        cmd = launch_command(run_dir, torchrun(nproc, target), extra=extra)
        process = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env=job_env(), cwd=REPO,
        )  # fmt: skip
        job = cls(run_dir, process)
        threading.Thread(target=job._read_stderr, daemon=True).start()
        threading.Thread(target=job._poll_metrics, daemon=True).start()
        return job

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(Seen(time.time(), line.rstrip("\n")))
            found = re.search(r"metrics at (http://\S+)", line)
            if found:
                self.url = found.group(1)
        self._done.set()

    def _poll_metrics(self) -> None:
        while not self._done.is_set():
            if self.url is not None:
                try:
                    with urllib.request.urlopen(self.url, timeout=2) as answer:
                        text = answer.read().decode()
                    now = time.time()
                    for line in text.splitlines():
                        if line.startswith("mrcdiag_live_newest_step "):
                            self.newest_step = max(self.newest_step, int(float(line.split()[1])))
                        m = _SERIES.match(line)
                        if m and m.group(1) == "mrcdiag_finding_active" and float(m.group(3)):
                            self.active.append(ActiveSeries(now, dict(_LABEL.findall(m.group(2)))))
                except OSError:
                    pass
            self._done.wait(0.25)

    def wait_for_line(self, pattern: str, timeout_s: float) -> Seen | None:
        """The first stderr line matching `pattern`, waiting up to timeout_s for it."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            for seen in list(self.lines):
                if re.search(pattern, seen.text):
                    return seen
            if self._done.is_set():
                break
            time.sleep(0.1)
        return next((s for s in list(self.lines) if re.search(pattern, s.text)), None)

    def wait(self, timeout_s: float) -> int:
        """The launcher's exit code. Past timeout_s, the processes it left are killed and
        the failure shows what each was doing and the job's last lines, with times."""
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"mrcdiag launch still running {timeout_s:.0f} s later\n{self._kill_tree()}"
            ) from None
        self._done.wait(10)
        return code

    def _kill_tree(self) -> str:
        import psutil

        try:
            tree = [psutil.Process(self.process.pid)]
            tree += tree[0].children(recursive=True)
        except psutil.Error:
            tree = []
        states = []
        for p in tree:
            try:
                states.append(f"  {p.pid} {p.status()} {' '.join(p.cmdline())[:160]}")
            except psutil.Error:
                pass
        for p in tree:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.process.wait(10)
        t0 = self.lines[0].t_unix_s if self.lines else 0.0
        tail = [f"  {s.t_unix_s - t0:8.2f} s  {s.text[:200]}" for s in self.lines[-40:]]
        return "processes:\n" + "\n".join(states) + "\nlast lines:\n" + "\n".join(tail)

    def said(self) -> str:
        return "\n".join(s.text for s in self.lines if s.text.startswith("mrcdiag"))

    def live_lines(self) -> list[dict]:
        path = self.run_dir / "findings.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def step_unix_s(run_dir: Path, rank: int, step: int, end: bool = False) -> float:
    """When `rank` began (or ended) `step`, in Unix time, from its own clock and rank.json."""
    import pyarrow.ipc as ipc

    rank_dir = run_dir / "ranks" / f"rank-{rank:05d}"
    meta = json.loads((rank_dir / "rank.json").read_text())
    offset = meta["attached_unix_ns"] - meta["attached_monotonic_ns"]
    with open(rank_dir / "steps.arrows", "rb") as f:
        table = ipc.open_stream(f).read_all()
    steps = table.column("step").to_pylist()
    t_ns = table.column("t_end_ns" if end else "t_start_ns").to_pylist()[steps.index(step)]
    return (t_ns + offset) / 1e9
