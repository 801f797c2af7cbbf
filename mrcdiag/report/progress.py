"""A progress bar on stderr while a large run is read (only on a terminal, only when slow)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

SHOW_AFTER_S = 1.0


@contextlib.contextmanager
def reading_progress() -> Iterator[Callable[[int, int], None] | None]:
    """Yields a callback(done, total) for the reader, or None when not on a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    started = time.monotonic()
    progress = Progress(
        TextColumn("reading ranks"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        transient=True,
        console=None,
        redirect_stdout=False,
    )
    state: dict[str, object] = {"task": None}

    def update(done: int, total: int) -> None:
        if state["task"] is None:
            if time.monotonic() - started < SHOW_AFTER_S:
                return
            progress.start()
            state["task"] = progress.add_task("read", total=total)
        progress.update(state["task"], completed=done)  # type: ignore[arg-type]

    try:
        yield update
    finally:
        if state["task"] is not None:
            progress.stop()
