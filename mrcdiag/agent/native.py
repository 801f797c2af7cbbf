"""Native frames of a node's ranks, from outside, where py-spy is installed.

A rank's own Python stacks (capture/stacks.py) end where Python calls into C: a rank
stuck in NCCL, in a CUDA synchronisation, in gloo or in a C extension shows only the
Python call that went in. `py-spy dump --native` reads the process from outside (ptrace:
root, or CAP_SYS_PTRACE, or kernel.yama.ptrace_scope 0) and gives the C/C++ frames too,
interleaved with the Python ones. The node agent runs it for each of its ranks when
their stacks are asked for (a hang, the launcher stopped), in parallel, each bounded by
a timeout; the answer goes to native_stacks.json in the rank's directory, written
atomically: the threads' frames, or the reason there are none (no py-spy, no permission,
the process gone).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from mrcdiag.store import layout
from mrcdiag.store.writer import write_json_atomic

PY_SPY_TIMEOUT_S = 15.0
MAX_THREADS = 64
MAX_FRAMES = 60  # per thread, the innermost ones


def py_spy() -> str | None:
    return shutil.which("py-spy")


def native_stacks(rank_dirs: list[Path]) -> threading.Thread | None:
    """Start taking these ranks' native stacks (one py-spy per rank, in parallel) in a
    background thread, returned so that a caller may wait for it; None without py-spy."""
    tool = py_spy()
    if tool is None or not rank_dirs:
        return None

    def take_all() -> None:
        workers = [
            threading.Thread(target=_take, args=(tool, d), name="mrcdiag-py-spy", daemon=True)
            for d in rank_dirs
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(PY_SPY_TIMEOUT_S + 5)

    thread = threading.Thread(target=take_all, name="mrcdiag-native-stacks", daemon=True)
    thread.start()
    return thread


def _take(tool: str, rank_dir: Path) -> None:
    try:
        pid = int(json.loads((rank_dir / layout.RANK_META_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # no process to read
    out: dict[str, Any] = {"t_unix_s": time.time(), "tool": "py-spy", "pid": pid}
    try:
        done = subprocess.run(
            [tool, "dump", "--pid", str(pid), "--native", "--json"],
            capture_output=True,
            text=True,
            timeout=PY_SPY_TIMEOUT_S,
        )
        if done.returncode != 0:
            out["error"] = _last_line(done.stderr or done.stdout) or f"exit {done.returncode}"
        else:
            out["threads"] = parse_py_spy(json.loads(done.stdout))
    except subprocess.TimeoutExpired:
        out["error"] = f"py-spy took longer than {PY_SPY_TIMEOUT_S:.0f} s"
    except (OSError, ValueError) as exc:
        out["error"] = str(exc)
    try:
        write_json_atomic(rank_dir / layout.NATIVE_STACKS_FILE, out)
    except OSError:
        pass  # the rank's directory is gone or full: the Python stacks still tell


def parse_py_spy(dump: Any) -> list[dict[str, Any]]:
    """py-spy's JSON (threads, frames innermost first) as stacks.json has them: frames
    innermost last, each {file, line, function, library}; the main thread first."""
    threads = []
    for t in dump if isinstance(dump, list) else []:
        if not isinstance(t, dict):
            continue
        frames = [
            {
                "file": str(f.get("filename") or "?"),
                "line": int(f.get("line") or 0),
                "function": str(f.get("name") or "?"),
                "library": str(f.get("short_filename") or ""),
            }
            for f in (t.get("frames") or [])[:MAX_FRAMES]
            if isinstance(f, dict)
        ][::-1]
        main = t.get("os_thread_id") == t.get("pid") or t.get("thread_name") == "MainThread"
        threads.append({"thread": str(t.get("thread_name") or t.get("thread_id")), "main": main,
                        "frames": frames})  # fmt: skip
    threads.sort(key=lambda t: not t["main"])
    return threads[:MAX_THREADS]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
