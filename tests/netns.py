"""Test hosts on one machine: network namespaces joined by veth pairs through a bridge,
each with its own address and hostname, cleaned up even when a test fails."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import launch_command

SUBNET = "10.213.{}.{}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def can_make_namespaces() -> str | None:
    """None when this process can build test hosts, else the reason it cannot."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    probe = f"mrcprobe{os.getpid()}"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create network namespaces: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Hosts:
    """`count` hosts named host0..hostN-1 at 10.213.<net>.1.., behind one bridge."""

    def __init__(self, count: int, workdir: Path) -> None:
        reason = can_make_namespaces()
        if reason:
            pytest.skip(reason)
        self.tag = f"m{os.getpid() % 100000}"
        self.net = os.getpid() % 200 + 20
        self.switch = f"{self.tag}sw"
        self.names = [f"{self.tag}h{i}" for i in range(count)]
        self.hostnames = [f"host{i}" for i in range(count)]
        self.addresses = [SUBNET.format(self.net, i + 1) for i in range(count)]
        self.workdir = workdir
        self.processes: list[subprocess.Popen] = []
        try:
            self._build()
        except BaseException:
            self.cleanup()
            raise

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, ns in enumerate(self.names):
            _ip("netns", "add", ns)
            _ip(
                "link",
                "add",
                f"{self.tag}v{i}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            _ip("link", "set", f"{self.tag}v{i}", "netns", self.switch)
            _ip("-n", self.switch, "link", "set", f"{self.tag}v{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.addresses[i]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def command(self, host: int, argv: list[str]) -> list[str]:
        """argv run inside host's namespace with its own hostname (a UTS namespace)."""
        inner = f"hostname {self.hostnames[host]} && exec {shlex.join(argv)}"
        return ["ip", "netns", "exec", self.names[host], "unshare", "--uts", "sh", "-c", inner]

    def start(self, host: int, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        out = open(log, "w")  # closed with the process
        proc = subprocess.Popen(
            self.command(host, argv), env=env, stdout=out, stderr=subprocess.STDOUT
        )
        proc.log = out  # type: ignore[attr-defined]
        self.processes.append(proc)
        return proc

    def shape(self, host: int, rate: str = "40mbit") -> None:
        """Rate-limit host's link both ways with tbf (netem is not in these kernels)."""
        for ns, dev in ((self.names[host], "eth0"), (self.switch, f"{self.tag}v{host}")):
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    rate,
                    "burst",
                    "32kbit",
                    "latency",
                    "400ms",
                ],
                check=True,
                capture_output=True,
            )

    def unshape(self, host: int) -> None:
        for ns, dev in ((self.names[host], "eth0"), (self.switch, f"{self.tag}v{host}")):
            subprocess.run(
                ["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"],
                check=True,
                capture_output=True,
            )

    def cleanup(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.log.close()
        for ns in self.names + [self.switch]:
            # kill anything still running in the namespace, then delete it
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
            _ip("netns", "del", ns, check=False)

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def launch_on_hosts(
    hosts: Hosts,
    nproc: int,
    target: list[str],
    env: dict[str, str],
    master_port: int = 29731,
    timeout: float = 120,
    extra_launch: list[str] | None = None,
    host_env: dict[int, dict[str, str]] | None = None,
    while_running=None,
) -> list[Path]:
    """One `mrcdiag launch -- torchrun --node-rank i` per host; returns each host's run dir.

    `while_running(run_dirs)` is called once every host has started."""
    run_dirs = []
    procs = []
    n = len(hosts.names)
    for i in range(n):
        run_dir = hosts.workdir / hosts.hostnames[i] / "run"  # each host's "local disk"
        run_dirs.append(run_dir)
        argv = launch_command(
            run_dir,
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                str(n),
                "--node-rank",
                str(i),
                "--nproc-per-node",
                str(nproc),
                "--master-addr",
                hosts.addresses[0],
                "--master-port",
                str(master_port),
                *target,
            ],
            # each agent on its host's address, where the live analysis on host0 reaches it
            extra=["--job", "multi", "--metrics-addr", hosts.addresses[i], *(extra_launch or [])],
        )
        procs.append(
            hosts.start(
                i,
                argv,
                {**env, "GLOO_SOCKET_IFNAME": "eth0", **(host_env or {}).get(i, {})},
                hosts.workdir / f"{hosts.hostnames[i]}.log",
            )
        )
    if while_running is not None:
        while_running(run_dirs)
    for i, proc in enumerate(procs):
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        if code != 0:
            log = (hosts.workdir / f"{hosts.hostnames[i]}.log").read_text()[-3000:]
            raise AssertionError(f"host {i} exited with {code}:\n{log}")
    return run_dirs
