"""One warning per cause, to stderr, so that a broken mrcdiag never floods a job's log."""

from __future__ import annotations

import sys

_said: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key in _said:
        return
    _said.add(key)
    try:
        # one write per line: ranks share the launcher's stderr and must not interleave
        sys.stderr.write(f"mrcdiag: {message}\n")
        sys.stderr.flush()
    except Exception:  # a closed stderr must not hurt the job
        pass
