"""How often the report is right: scenarios x seeds on real torchrun jobs.

    python benchmarks/detection_matrix.py [--seeds 3] [--only NAME ...] [--json OUT]

Each scenario runs a real job under `mrcdiag launch` (gloo, CPU, this host), with its
fault injected the way it happens: extra work or a slow DataLoader inside the job; a busy
loop pinned to a rank's core, SIGSTOP/SIGCONT on a duty cycle, or a CPU-limited cgroup
(a container's limit), from outside it. The
report's findings of severity warning or above are then judged against what was
injected:

  right        the expected finding (kind and rank) with an accepted cause, nothing else
  missed       the expected finding is not there
  false        a warning about something that was not injected (on clean runs: any)
  wrong cause  the right kind and rank, another cause

and printed per scenario. The multi-host scenarios run on test hosts made of network
namespaces (tests/netns.py: root and iproute2), a link shaped with tbf; without them they
are left out with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STACKS = REPO / "tests" / "jobs" / "stacks"


@dataclass(frozen=True)
class Expected:
    kind: str  # "" for a clean run: no warning at all
    ranks: tuple[int, ...] = ()
    causes: tuple[str, ...] = ()  # accepted causes (empty: any)
    or_nothing: bool = False  # the fault may also go unreported (a co-tenant on 2 cores)
    nodes: tuple[str, ...] = ()  # the hosts it must name


@dataclass(frozen=True)
class Scenario:
    name: str
    nproc: int
    target: list[str]
    expected: Expected
    env: dict[str, str] = field(default_factory=dict)
    # "hog:RANK", "sigstop:RANK:STOPPED_MS:PERIOD_MS" (a duty cycle), or
    # "cgroup:RANK[,RANK...]:QUOTA_MS" (moved into a cgroup that may run QUOTA_MS of every
    # 100 ms as they attach: a container's CPU limit)
    outside: str = ""
    hosts: int = 0  # >0: that many test hosts (network namespaces), nproc ranks on each
    slow_link: str = ""  # "HOST:RATE": that host's link shaped with tbf


def demo(*args: str) -> list[str]:
    return ["-m", "mrcdiag.demo_job", *args]


# 30 ms of work: 10% is 3 ms. 200 steps, 6 s: a fault must cost 0.25 s to warn
# (Settings.min_warning_lost_s), and 5% of 30 ms over 197 steady steps is 0.3 s.
WORK = ["--steps", "200", "--work-ms", "30"]
SCENARIOS = [
    Scenario("clean, 2 ranks", 2, demo(*WORK), Expected("")),
    Scenario("clean, 3 ranks on 2 cores", 3, demo(*WORK), Expected("")),
    Scenario("clean, Hugging Face Trainer", 2, [str(STACKS / "hf_trainer.py")], Expected(""),
             {"STACK_STEPS": "40"}),
    Scenario("clean, Lightning DDP", 2, [str(STACKS / "lightning_ddp.py")], Expected(""),
             {"STACK_STEPS": "40"}),
    Scenario("clean, pipeline (GPipe)", 2, [str(STACKS / "pipeline.py")], Expected(""),
             {"STACK_STEPS": "12", "STACK_PROFILE": "0"}),
    Scenario("clean, pipeline (1F1B)", 2, [str(STACKS / "pipeline.py")], Expected(""),
             {"STACK_STEPS": "12", "STACK_SCHEDULE": "1f1b", "STACK_PROFILE": "0"}),
    Scenario("clean, 3 hosts", 1, demo("--steps", "60", "--work-ms", "8"), Expected(""),
             hosts=3),
    Scenario("one rank 5% slower", 2, demo(*WORK, "--slow-rank", "1", "--slow-ms", "1.5"),
             Expected("straggler", (1,), ("slow_compute", "unknown"))),
    Scenario("one rank 10% slower", 2, demo(*WORK, "--slow-rank", "1", "--slow-ms", "3"),
             Expected("straggler", (1,), ("slow_compute", "unknown"))),
    Scenario("one rank 20% slower", 2, demo(*WORK, "--slow-rank", "1", "--slow-ms", "6"),
             Expected("straggler", (1,), ("slow_compute",))),
    Scenario("one rank 20% slower, 3 ranks", 3,
             demo(*WORK, "--slow-rank", "2", "--slow-ms", "6"),
             Expected("straggler", (2,), ("slow_compute", "unknown"))),
    Scenario("slow DataLoader on one rank", 2,
             demo(*WORK, "--slow-data-rank", "1", "--slow-data-ms", "10"),
             Expected("straggler", (1,), ("data_loading",))),
    Scenario("stall of 150 ms every 10th step", 3,
             demo(*WORK, "--slow-rank", "1", "--slow-ms", "150", "--stall-every", "10"),
             Expected("straggler", (1,), ("slow_compute",))),
    Scenario("rank 0 evaluates 150 ms after its backward pass every 20th step", 2,
             demo(*WORK, "--slow-rank", "0", "--slow-ms", "150", "--stall-every", "20",
                  "--stall-after-backward"),
             Expected("straggler", (0,), ("slow_compute",))),
    Scenario("slow from mid-run (50%)", 2,
             demo("--steps", "160", "--work-ms", "20", "--slow-rank", "1", "--slow-ms", "6",
                  "--slow-from-step", "80"),
             Expected("straggler", (1,), ("slow_compute", "unknown"))),
    Scenario("SIGSTOP 30 ms of every 100 ms", 3, demo("--steps", "150", "--work-ms", "10"),
             Expected("straggler", (2,), ("unknown", "host_contention")), outside="sigstop:2:30:100"),
    Scenario("SIGSTOP 40 ms of every 100 ms, 2 ranks", 2, demo("--steps", "150", "--work-ms", "10"),
             Expected("straggler", (1,), ("unknown", "host_contention")), outside="sigstop:1:40:100"),
    Scenario("SIGSTOP 200 ms of every second, 4 ranks on 2 cores, mostly in collectives", 4,
             demo("--steps", "300", "--work-ms", "1", "--hidden", "1536"),
             Expected("straggler", (3,), ("unknown",)), outside="sigstop:3:200:1000"),
    Scenario("CPU co-tenant on rank 1's core", 2,
             demo("--steps", "60", "--work-ms", "0", "--fixed-work", "300", "--pin"),
             Expected("straggler", (1,), ("host_contention",), or_nothing=True),
             outside="hog:1"),
    Scenario("CPU limit on rank 1's container (30 ms of 100 ms)", 2,
             demo("--steps", "150", "--work-ms", "10"),
             Expected("straggler", (1,), ("cpu_throttled",)), outside="cgroup:1:30"),
    Scenario("Hugging Face Trainer, CPU limit on rank 1's container", 2,
             [str(STACKS / "hf_trainer.py")],
             Expected("straggler", (1,), ("cpu_throttled",)), {"STACK_STEPS": "60"},
             outside="cgroup:1:30"),
    Scenario("FSDP2, CPU limit on rank 0's container", 2, [str(STACKS / "fsdp2.py")],
             Expected("straggler", (0,), ("cpu_throttled",)), {"STACK_STEPS": "60"},
             outside="cgroup:0:30"),
    Scenario("Lightning DDP, SIGSTOP 40 ms of every 100 ms on rank 1", 2,
             [str(STACKS / "lightning_ddp.py")],
             Expected("straggler", (1,), ("unknown", "host_contention")),
             {"STACK_STEPS": "1000"}, outside="sigstop:1:40:100"),
    Scenario("pipeline (1F1B), SIGSTOP 40 ms of every 100 ms on stage 1", 2,
             [str(STACKS / "pipeline.py")],
             Expected("straggler", (1,), ("unknown", "host_contention")),
             {"STACK_SCHEDULE": "1f1b", "STACK_STEPS": "200", "STACK_PROFILE": "0"},
             outside="sigstop:1:40:100"),
    Scenario("tight CPU limit on the whole job (40 ms of 100 ms)", 2,
             demo("--steps", "150", "--work-ms", "10"),
             Expected("idle_compute", (0, 1), ("cpu_throttled",)), outside="cgroup:0,1:40"),
    Scenario("job-wide slowdown", 2,
             demo(*WORK, "--slowdown-at-step", "30", "--slowdown-ms", "15"),
             Expected("slowdown")),
    Scenario("a rank dies", 3, demo(*WORK, "--die-rank", "2", "--die-at-step", "30"),
             Expected("hang", (2,))),
    Scenario("tensor parallel (init_device_mesh), one rank slower", 2,
             [str(STACKS / "tp_mesh.py")], Expected("straggler", (1,)),
             {"STACK_STEPS": "60", "STACK_SLOW_RANK": "1", "STACK_SLOW_S": "0.01"}),
    Scenario("FSDP2, one rank slower", 2, [str(STACKS / "fsdp2.py")],
             Expected("straggler", (1,)),
             {"STACK_STEPS": "60", "STACK_SLOW_RANK": "1", "STACK_SLOW_S": "0.01"}),
    Scenario("2-D mesh (dp x tp), one rank slower", 4, [str(STACKS / "dp_tp_2d.py")],
             Expected("straggler", (2,)),
             {"STACK_STEPS": "60", "STACK_SLOW_RANK": "2", "STACK_SLOW_S": "0.02"}),
    Scenario("slow link (one host at 40 Mbit/s)", 1, demo("--steps", "30", "--work-ms", "5"),
             Expected("interconnect", causes=("slow_link",), nodes=("host1",)),
             hosts=3, slow_link="1:40mbit"),
    Scenario("slow node (both ranks of a host slower)", 2,
             demo(*WORK, "--slow-host-rank", "2", "--slow-ms", "6"),
             Expected("straggler", (2, 3), ("slow_node",), nodes=("host1",)), hosts=2),
    Scenario("pipeline (1F1B), uneven stages", 2, [str(STACKS / "pipeline.py")],
             Expected("straggler", (1,), ("stage_imbalance",)),
             {"STACK_SCHEDULE": "1f1b", "STACK_SLOW_STAGE": "1", "STACK_STEPS": "80",
              "STACK_PROFILE": "0"}),
]  # fmt: skip


def _outside(spec: str, run_dir: Path, proc: subprocess.Popen) -> Callable[[], None]:
    """Start the fault from outside the job; returns what stops it."""
    if not spec:
        return lambda: None
    kind, rank, *duty_ms = spec.split(":")
    if kind == "cgroup":
        return _cgroup(run_dir, proc, [int(r) for r in rank.split(",")], int(duty_ms[0]))
    if kind == "hog":
        hog = subprocess.Popen(
            [sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{rank}}})\nwhile 1: pass"]
        )
        return lambda: (hog.kill(), hog.wait())
    stopped_s, period_s = (float(v) / 1e3 for v in duty_ms)
    sys.path.insert(0, str(REPO / "tests"))
    from outside import stopped_on_a_duty_cycle

    context = stopped_on_a_duty_cycle(run_dir, int(rank), proc, stopped_s, period_s)
    context.__enter__()
    return lambda: context.__exit__(None, None, None)


def _cgroup(
    run_dir: Path, proc: subprocess.Popen, ranks: list[int], quota_ms: int
) -> Callable[[], None]:
    """`ranks` moved into a CPU-limited cgroup as each attaches; removed at the end."""
    sys.path.insert(0, str(REPO / "tests"))
    from cgroups import limited_cgroup

    context = limited_cgroup(quota_ms)
    group = context.__enter__()
    if group is None:
        context.__exit__(None, None, None)
        raise RuntimeError("needs root and a writable cgroup hierarchy with the cpu controller")
    stop = threading.Event()

    def move() -> None:
        for rank in ranks:
            meta = run_dir / "ranks" / f"rank-{rank:05d}" / "rank.json"
            while not meta.exists() and proc.poll() is None and not stop.is_set():
                stop.wait(0.05)
            if meta.exists():
                group.add(json.loads(meta.read_text())["pid"])

    thread = threading.Thread(target=move, daemon=True)
    thread.start()

    def end() -> None:
        stop.set()
        thread.join()
        context.__exit__(None, None, None)

    return end


def run_on_hosts(scenario: Scenario, tmp: Path, env: dict[str, str]) -> list[Path]:
    """The job on `scenario.hosts` test hosts; each host's run dir."""
    sys.path.insert(0, str(REPO / "tests"))
    from netns import Hosts, can_make_namespaces, launch_on_hosts

    reason = can_make_namespaces()
    if reason:
        raise RuntimeError(reason)
    with Hosts(scenario.hosts, tmp) as hosts:
        if scenario.slow_link:
            host, rate = scenario.slow_link.split(":")
            hosts.shape(int(host), rate)
        return launch_on_hosts(
            hosts, scenario.nproc, scenario.target, env, timeout=300,
            extra_launch=["--interval", "0.5"],
        )  # fmt: skip


def run_once(scenario: Scenario, tmp: Path) -> list[dict]:
    run_dir = tmp / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", **scenario.env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if scenario.hosts:
        return _warnings(run_on_hosts(scenario, tmp, env), env)
    cmd = [
        sys.executable, "-m", "mrcdiag.cli", "launch", "--run-dir", str(run_dir),
        "--metrics-port", "0", "--metrics-addr", "127.0.0.1", "--interval", "0.5", "--",
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(scenario.nproc),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", *scenario.target,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    stop = _outside(scenario.outside, run_dir, proc)
    try:
        proc.wait(timeout=300)
    finally:
        stop()
    return _warnings([run_dir], env)


def _warnings(run_dirs: list[Path], env: dict[str, str]) -> list[dict]:
    """The report's findings of severity warning or above."""
    report = subprocess.run(
        [sys.executable, "-m", "mrcdiag.cli", "report", *map(str, run_dirs), "--format", "json"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip
    if report.returncode != 0:
        return [{"kind": "error", "ranks": [], "cause": report.stderr.strip()[-200:]}]
    findings = json.loads(report.stdout)["findings"]
    return [f for f in findings if f["severity"] in ("warning", "critical")]


def judge(expected: Expected, warnings: list[dict]) -> str:
    """right, missed, false or wrong cause."""
    if not expected.kind:
        return "right" if not warnings else "false"
    hits = [
        f
        for f in warnings
        if f["kind"] == expected.kind
        and (not expected.ranks or set(expected.ranks) <= set(f["ranks"]))
        and (not expected.nodes or set(expected.nodes) <= set(f["nodes"]))
    ]
    others = [
        f
        for f in warnings
        if f not in hits and (f["kind"] != "idle_compute" or f["cause"] == "cpu_throttled")
    ]
    if expected.kind == "hang":  # the others' waits are the hang's consequence
        others = [f for f in others if f["kind"] not in ("straggler", "slowdown")]
    if not hits:
        if others:
            return "false"
        return "right" if expected.or_nothing else "missed"
    if others:
        return "false"
    if expected.causes and not any(f["cause"] in expected.causes for f in hits):
        return "wrong cause"
    return "right"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="runs of each scenario")
    p.add_argument("--only", nargs="*", default=[], help="scenarios whose name contains this")
    p.add_argument("--json", type=Path, help="also write every verdict here")
    p.add_argument(
        "--keep-wrong",
        type=Path,
        metavar="DIR",
        help="copy the run directory of every run judged other than right into DIR",
    )
    args = p.parse_args()
    chosen = [s for s in SCENARIOS if not args.only or any(o in s.name for o in args.only)]
    rows, details = [], []
    for scenario in chosen:
        verdicts = []
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    warnings = run_once(scenario, Path(tmp))
                except Exception as error:  # a job that failed, or hosts that cannot be made
                    reason = str(error).strip().splitlines()[0][:200]
                    if "namespaces" in reason:
                        print(f"  {scenario.name}: left out ({reason})", flush=True)
                        break
                    warnings = [{"kind": "error", "ranks": [], "cause": reason}]
                verdict = judge(scenario.expected, warnings)
                if verdict != "right" and args.keep_wrong and (Path(tmp) / "run").is_dir():
                    kept = args.keep_wrong / f"{scenario.name.replace('/', '_')} #{seed}"
                    shutil.copytree(Path(tmp) / "run", kept, dirs_exist_ok=True)
            verdicts.append(verdict)
            details.append(
                {
                    "scenario": scenario.name,
                    "seed": seed,
                    "verdict": verdict,
                    "warnings": [(f["kind"], f["cause"], f["ranks"]) for f in warnings],
                    "findings": warnings,  # whole, with their evidence
                }
            )
            print(f"  {scenario.name} #{seed}: {verdict} {details[-1]['warnings']}", flush=True)
            if verdict != "right":
                for f in warnings:
                    print(f"      {f.get('summary', '')[:300]}", flush=True)
        rows.append((scenario.name, verdicts))
    print()
    print("| scenario | runs | right | missed | false warnings | wrong cause |")
    print("|---|---|---|---|---|---|")
    for name, verdicts in rows:
        counts = [verdicts.count(v) for v in ("right", "missed", "false", "wrong cause")]
        print(f"| {name} | {len(verdicts)} | " + " | ".join(map(str, counts)) + " |")
    if args.json:
        args.json.write_text(json.dumps(details, indent=1))


if __name__ == "__main__":
    main()
