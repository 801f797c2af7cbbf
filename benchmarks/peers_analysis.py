"""The analysis side: mrcdiag's report beside Holistic Trace Analysis and the flight
recorder's own analyzer, on one run with a slow rank.

    python benchmarks/peers_analysis.py [--ranks 2] [--steps 200] [--slow-rank 1]
        [--slow-ms 30] [--keep DIR]

One job (benchmarks/peers_job.py, gloo) in which `--slow-rank` computes `--slow-ms` more
each step, recorded three ways at once: under `mrcdiag launch`, with torch.profiler's
10-step window on every rank (the traces HTA reads) and with the flight recorder on
(each rank's buffer dumped at the end, as its timeout dump would be). Then each tool
analyses what it needs, in its own process, timed with its peak memory (/usr/bin/time):
`mrcdiag report`, HTA's temporal breakdown and communication/computation overlap (pip
install HolisticTraceAnalysis; skipped with a line where it is not installed), and
`python -m torch.distributed.flight_recorder.fr_trace`. Printed: one table row per tool
with its time, peak memory and what it says about the slow rank.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

HTA_SCRIPT = """
import json, sys
from hta.trace_analysis import TraceAnalysis
analyzer = TraceAnalysis(trace_dir=sys.argv[1])
out = {}
for name in ("get_temporal_breakdown", "get_comm_comp_overlap"):
    try:
        frame = getattr(analyzer, name)(visualize=False)
        out[name] = json.loads(frame.to_json(orient="records"))
    except Exception as exc:
        out[name] = {"error": repr(exc)}
json.dump(out, open(sys.argv[2], "w"))
"""


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, float, float, str]:
    """(exit code, seconds, peak resident MiB, output) of one analysis."""
    fmt = "MRCDIAG_TIME %e %M"
    done = subprocess.run(
        ["/usr/bin/time", "-f", fmt, *cmd],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    line = next(x for x in reversed(done.stderr.splitlines()) if x.startswith("MRCDIAG_TIME"))
    _, seconds, kib = line.split()
    return done.returncode, float(seconds), int(kib) / 1024, done.stdout + done.stderr


def record(tmp: Path, args: argparse.Namespace) -> None:
    cmd = [
        sys.executable, "-m", "mrcdiag.cli", "launch", "--run-dir", str(tmp / "run"),
        "--metrics-port", "0", "--metrics-addr", "127.0.0.1", "--",
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.ranks),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",
        str(HERE / "peers_job.py"), "--steps", str(args.steps), "--batch", "32",
        "--slow-rank", str(args.slow_rank), "--slow-ms", str(args.slow_ms),
        "--profile", "window", "--trace-dir", str(tmp / "traces"),
        "--fr-dump-dir", str(tmp / "fr"),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_FR_BUFFER_SIZE="20000")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"the recorded job failed ({done.returncode}):\n{done.stderr[-3000:]}")


def mrcdiag_row(tmp: Path, slow: int) -> dict:
    out = tmp / "report.json"
    cmd = [sys.executable, "-m", "mrcdiag.cli", "report", str(tmp / "run"), "--format", "json"]
    code, seconds, mib, text = timed(cmd + ["-o", str(out)])
    if code != 0:
        return {"tool": "mrcdiag report", "seconds": seconds, "mib": mib, "says": text[-300:]}
    findings = json.loads(out.read_text())["findings"]
    stragglers = [f for f in findings if f["kind"] == "straggler"]
    says = (
        "; ".join(
            f"{f['severity']} straggler rank(s) {f['ranks']}: {f['cause']}, {f['time_lost_s']:.1f} s lost"
            for f in stragglers
        )
        or "no straggler"
    )
    named = any(f["ranks"] == [slow] for f in stragglers)
    return {"tool": "mrcdiag report", "seconds": seconds, "mib": mib, "names": named, "says": says}


def hta_row(tmp: Path, slow: int) -> dict:
    try:
        import hta  # noqa: F401
    except ImportError:
        return {"tool": "HTA", "says": "not installed (pip install HolisticTraceAnalysis)"}
    out = tmp / "hta.json"
    cmd = [sys.executable, "-c", HTA_SCRIPT, str(tmp / "traces"), str(out)]
    code, seconds, mib, text = timed(cmd)
    if code != 0 or not out.exists():
        return {"tool": "HTA", "seconds": seconds, "mib": mib, "says": text.strip()[-300:]}
    result = json.loads(out.read_text())
    overlap = result.get("get_comm_comp_overlap")
    says = []
    for name, value in result.items():
        if isinstance(value, dict) and "error" in value:
            says.append(f"{name}: {value['error'][:160]}")
    if isinstance(overlap, list) and overlap:
        says.append(f"comm/comp overlap per rank: {overlap}")
    return {
        "tool": "HTA (temporal breakdown, comm/comp overlap)",
        "seconds": seconds,
        "mib": mib,
        "names": False,  # it computes per-rank tables; it gives no verdict about a rank
        "says": "; ".join(says) or "per-rank tables, no verdict",
    }


def flight_recorder_row(tmp: Path, slow: int) -> dict:
    cmd = [
        sys.executable, "-m", "torch.distributed.flight_recorder.fr_trace", str(tmp / "fr"),
        "-p", "trace_rank_",
    ]  # fmt: skip
    code, seconds, mib, text = timed(cmd)
    lines = [x for x in text.splitlines() if x.strip() and "tabulate" not in x]
    return {
        "tool": "flight recorder (fr_trace)",
        "seconds": seconds,
        "mib": mib,
        # it reports collectives that ranks issued differently, not slow ranks: a rank
        # counts as named only where it ran to the end and singled that rank out
        "names": code == 0 and (f"rank {slow}" in text or f"rank: {slow}" in text),
        "says": (" / ".join(lines[-3:]) or f"exit {code}, nothing printed")[:300],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--slow-rank", type=int, default=1)
    p.add_argument("--slow-ms", type=float, default=30.0)
    p.add_argument("--keep", help="record into this folder and keep it")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.keep or scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        record(tmp, args)
        rows = [f(tmp, args.slow_rank) for f in (mrcdiag_row, hta_row, flight_recorder_row)]
    print(f"{args.ranks} gloo ranks, {args.steps} steps, rank {args.slow_rank} "
          f"+{args.slow_ms:.0f} ms a step")  # fmt: skip
    print("| tool | time (s) | peak memory (MiB) | names the slow rank | what it says |")
    print("|---|---|---|---|---|")
    for r in rows:
        seconds = f"{r['seconds']:.2f}" if "seconds" in r else "-"
        mib = f"{r['mib']:.0f}" if "mib" in r else "-"
        names = {True: "yes", False: "no"}.get(r.get("names"), "-")
        says = str(r["says"]).replace("|", "/").replace("\n", " ")
        print(f"| {r['tool']} | {seconds} | {mib} | {names} | {says} |")


if __name__ == "__main__":
    main()
