"""mrcdiag: find out why distributed PyTorch training is slow.

Two lines for those who do not use `mrcdiag launch`::

    import mrcdiag
    mrcdiag.attach()          # after torch.distributed.init_process_group()
    for batch in loader:
        with mrcdiag.step():  # optional: steps are found from optimizer.step() otherwise
            ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__version__ = "0.1.0"


def attach(run_dir: str | None = None, job: str | None = None) -> bool:
    """Record this rank's collectives and steps into a run directory."""
    from mrcdiag.capture.attach import attach as _attach

    return _attach(run_dir, job)


@contextlib.contextmanager
def step() -> Iterator[None]:
    """Mark one training step by hand; turns off step detection from optimizer.step()."""
    from mrcdiag.capture.wrappers import current_session

    session = current_session()
    if session is None:
        yield
        return
    session.steps.begin_manual()
    try:
        yield
    finally:
        if current_session() is session:
            session.steps.end_manual()
