"""One warning per cause, to stderr, so that a broken mrcdiag never floods a job's log."""

from __future__ import annotations

import sys

_said: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key in _said:
        return
    _said.add(key)
    try:
        print(f"mrcdiag: {message}", file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 - a closed stderr must not hurt the job
        pass
