"""`mrcdiag watch`: the live view's loop. It reads the state of a live analysis, either
an agent's (`--url`: the one the job already runs, nothing computed twice) or one it
runs itself over a run directory (the ranks it can read, and the other nodes' agents
named in world.json), and shows it every `interval_s`."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mrcdiag.agent import http
from mrcdiag.agent.live import LiveAnalysis, live_state
from mrcdiag.agent.sources import JobRecords
from mrcdiag.store import layout
from mrcdiag.store.records import RunMeta


class WatchError(Exception):
    """The thing to watch cannot be read; the message is meant for the user."""


def agent_state(url: str) -> Callable[[], dict[str, Any]]:
    """The live state an agent serves (url: its base or its /metrics URL)."""
    base = url.removesuffix("/metrics").rstrip("/")

    def read() -> dict[str, Any]:
        try:
            with urllib.request.urlopen(base + http.LIVE_PATH, timeout=5) as answer:
                return json.loads(answer.read())
        except (OSError, ValueError) as exc:
            raise WatchError(
                f"cannot read {base}{http.LIVE_PATH} ({exc}); is `mrcdiag launch` or "
                "`mrcdiag agent` running there?"
            ) from None

    return read


def run_dir_state(run_dir: Path, node: str) -> Callable[[], dict[str, Any]]:
    """A live analysis of its own over a run directory, one tick a call."""
    if not (run_dir / layout.RUN_FILE).exists() and not (run_dir / layout.RANKS_DIR).is_dir():
        raise WatchError(
            f"{run_dir} is not an mrcdiag run directory (no run.json, no ranks/); pass the "
            "directory that `mrcdiag launch` printed"
        )
    records = JobRecords(run_dir, node)
    run = None
    try:
        run = RunMeta.from_json(json.loads((run_dir / layout.RUN_FILE).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    live = LiveAnalysis(
        records.read_new,
        job=run.job if run else "",
        world=records.world,
        link_probe=records.link_probe,
    )
    started = False

    def read() -> dict[str, Any]:
        nonlocal started
        live.tick()
        started = started or bool(live.window.ranks)
        return live_state(live if started else None)

    return read


def watch(
    read: Callable[[], dict[str, Any]],
    show: Callable[[dict[str, Any]], None],
    interval_s: float = 1.0,
    count: int | None = None,
) -> None:
    """Read and show the state every interval_s, `count` times (None: until interrupted)."""
    shown = 0
    while count is None or shown < count:
        started = time.monotonic()
        show(read())
        shown += 1
        if count is None or shown < count:
            time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
