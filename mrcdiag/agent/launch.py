"""`mrcdiag launch`: run the user's command unchanged, with the hook armed in every worker.

The command line parses and delegates; the Launcher owns the whole life cycle, as
torch's elastic agent does: prepare the run directory and the workers' environment,
start the node agent, start the job, forward signals, wait, stop the agent, and hand
back the job's exit code. What it has to tell the person goes through `say`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mrcdiag
from mrcdiag.analyzers.settings import DEFAULTS
from mrcdiag.capture.attach import run_metadata
from mrcdiag.capture.autoimport import BOOT_DIR
from mrcdiag.capture.clock import AGENT_ADDR_ENV, AGENT_PORT_ENV
from mrcdiag.capture.lifecycle import VERIFY_ENV
from mrcdiag.store import layout
from mrcdiag.store.records import WorldMeta
from mrcdiag.store.writer import write_json_atomic

PACKAGE_PARENT = Path(mrcdiag.__file__).resolve().parent.parent
# Entries of the flight recorder's ring per rank under --verify-capture (older ones drop
# off; the check then compares the sequence numbers still held).
FLIGHT_RECORDER_ENTRIES = 1 << 16
# What launch does when the live analysis finds a hang: say it; also have every rank
# write its stacks; also end the job, so that torchrun's restarts or the scheduler's
# retry start without waiting out the collective's timeout.
ON_HANG = ("warn", "dump", "abort")
# launch's exit code when it ended the job for a hang (sysexits' EX_TEMPFAIL: try again)
EXIT_HANG_ABORTED = 75
# How long the ranks get to write their stacks before the job is ended
STACKS_WAIT_S = 3.0


def _to_stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


@dataclass
class Launcher:
    command: list[str]
    run_dir: Path
    job: str
    metrics_port: int | None = None  # None: no /metrics endpoint (samples still recorded)
    agent_interval_s: float = 1.0
    metrics_addr: str = "0.0.0.0"
    extra_env: dict[str, str] = field(default_factory=dict)
    say: Callable[[str], None] = _to_stderr
    verify_capture: bool = False  # run PyTorch's flight recorder beside us and compare
    hang_after_s: float = DEFAULTS.hang_after_s
    live: bool = True  # the live analysis, on the node of global rank 0
    on_hang: str = "dump"  # one of ON_HANG
    _agent: Any = None
    _process: Any = None
    _aborted_for_hang: bool = False

    def run_job(self) -> int:
        """The whole life cycle; returns the job's exit code (128+N for signal N)."""
        env = self.prepare()
        self.say(f"mrcdiag: recording into {self.run_dir}")
        self._start_agent_or_say_why()
        if self._agent is not None and self._agent.bound_port is not None:
            env[AGENT_PORT_ENV] = str(self._agent.bound_port)
            env[AGENT_ADDR_ENV] = self.metrics_addr
        try:
            code = self.run(env)
        finally:
            self.stop_agent()
        self.say_who_never_attached()
        return code

    def say_who_never_attached(self) -> None:
        """A rank that never attached recorded nothing: say so plainly, now."""
        all_dirs = layout.rank_dirs(self.run_dir)
        for d in all_dirs:
            failed = d / layout.ATTACH_FAILED_FILE
            if failed.exists() and not (d / layout.RANK_META_FILE).exists():
                try:
                    reason = json.loads(failed.read_text()).get("reason", "?")
                except (OSError, ValueError):
                    reason = "?"
                self.say(f"mrcdiag: rank {layout.rank_of_dir(d)} could not attach: {reason}")
        dirs = [d for d in all_dirs if (d / layout.RANK_META_FILE).exists()]
        if not dirs:
            self.say(
                "mrcdiag: no rank attached, so nothing was recorded: the job never created "
                "its default process group (init_process_group or init_device_mesh), or "
                "ended before it did"
            )
            return
        try:
            world = WorldMeta.from_json(json.loads((self.run_dir / layout.WORLD_FILE).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return
        if len(world.ranks_per_host) != 1:
            return  # several nodes: each launch sees its own ranks only
        attached = {layout.rank_of_dir(d) for d in dirs}
        missing = sorted(set(range(world.world_size)) - attached)
        if missing:
            self.say(
                f"mrcdiag: rank(s) {', '.join(map(str, missing))} of {world.world_size} never "
                "attached and were not recorded (see their output above)"
            )

    def prepare(self) -> dict[str, str]:
        """Create the run directory, write run.json first, and build the workers' env."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run_file = self.run_dir / layout.RUN_FILE
        if not run_file.exists():  # on shared storage the first node's launch writes it
            write_json_atomic(run_file, run_metadata(self.job, self.command).to_json())
        env = dict(os.environ)
        python_path = [str(BOOT_DIR), str(PACKAGE_PARENT)]
        if env.get("PYTHONPATH"):
            python_path.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(python_path)
        env["MRCDIAG_RUN_DIR"] = str(self.run_dir)
        env["MRCDIAG_JOB"] = self.job
        if self.verify_capture:
            env[VERIFY_ENV] = "1"
            env.setdefault("TORCH_FR_BUFFER_SIZE", str(FLIGHT_RECORDER_ENTRIES))
        env.update(self.extra_env)
        return env

    def _start_agent_or_say_why(self) -> None:
        """The job runs even when the agent cannot: a port in use costs /metrics only."""
        try:
            url = self.start_agent()
            if url:
                self.say(f"mrcdiag: metrics at {url}")
            return
        except OSError as exc:
            self.say(
                f"mrcdiag: no /metrics endpoint on port {self.metrics_port} "
                f"({exc.strerror or exc}); the job runs and is still recorded. Pick another "
                "--metrics-port, or 0 for any free port."
            )
        except Exception as exc:  # the job runs even when the agent cannot
            self.say(f"mrcdiag: node agent not started ({exc!r}); the job is still recorded")
            return
        self.metrics_port = None
        try:
            self.start_agent()
        except Exception as exc:
            self.say(f"mrcdiag: node agent not started ({exc!r})")

    def start_agent(self) -> str | None:
        """Start the node agent beside the job; returns the /metrics URL it serves."""
        from mrcdiag.agent.node import NodeAgent

        self._agent = NodeAgent(
            run_dir=self.run_dir,
            port=self.metrics_port,
            interval_s=self.agent_interval_s,
            job=self.job,
            addr=self.metrics_addr,
            live=self.live,
            settings=replace(DEFAULTS, hang_after_s=self.hang_after_s),
            say=self.say,
            on_hang=self._hang_found if self.on_hang != "warn" else None,
        )
        return self._agent.start()

    def stop_agent(self) -> None:
        if self._agent is not None:
            self._agent.stop()
            self._agent = None

    def _hang_found(self, _live: Any) -> None:
        """From the live analysis: a hang. Every rank writes its stacks; with abort, the
        job then ends (in a thread of its own: the analysis goes on meanwhile)."""
        if self.on_hang == "abort":
            threading.Thread(target=self._abort_for_hang, daemon=True).start()
        elif self._agent is not None:
            self._agent.dump_stacks()

    def _abort_for_hang(self) -> None:
        if self._agent is not None:
            self._agent.dump_stacks(wait_s=STACKS_WAIT_S)
        process = self._process
        if process is None or process.poll() is not None:
            return
        self._aborted_for_hang = True
        self.say(
            f"mrcdiag: ending the job for the hang (--on-hang abort); launch exits with "
            f"{EXIT_HANG_ABORTED}"
        )
        process.send_signal(signal.SIGTERM)

    def run(self, env: dict[str, str]) -> int:
        """Run the job to its end and return its exit code (128+N for signal N;
        EXIT_HANG_ABORTED when launch ended it for a hang)."""
        process = subprocess.Popen(self.command, env=env)
        self._process = process

        def forward(signum: int, _frame: Any) -> None:
            self.say(f"mrcdiag: {signal.Signals(signum).name}: ending the job")
            if self._agent is not None:  # where every rank was when it was stopped
                try:
                    self._agent.dump_stacks(wait_s=STACKS_WAIT_S)
                except Exception as exc:
                    self.say(f"mrcdiag: could not ask the ranks for their stacks ({exc!r})")
            process.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = process.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self._aborted_for_hang:
            return EXIT_HANG_ABORTED
        return 128 - code if code < 0 else code
