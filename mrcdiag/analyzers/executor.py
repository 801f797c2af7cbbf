"""Where the analysis's independent pieces run: a second thread after the run, the
caller's own thread beside a training job (analyzers/__init__.analyze says why)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any


class InlineExecutor(Executor):
    """Runs each call where it is submitted; its future is done when submit returns."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        done: Future = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on it
            done.set_exception(exc)
        return done


INLINE = InlineExecutor()


def analysis_executor(threads: bool) -> Executor:
    return ThreadPoolExecutor(1, "mrcdiag-analysis") if threads else InlineExecutor()
