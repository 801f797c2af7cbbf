"""Put on the workers' PYTHONPATH by `mrcdiag launch`: arms the hook before user code runs.

It acts in the torchrun workers (LOCAL_RANK set) of an mrcdiag launch, importing nothing
heavy (torch is wrapped when the script itself imports it); in torchrun's own process it
only adds a logging handler that notes a failed worker's exit code (capture/exits.py).
Then it hands over to any other sitecustomize that was on the path.
"""

import os
import sys


def _mrcdiag_boot() -> None:
    if not os.environ.get("MRCDIAG_RUN_DIR"):
        return
    if "LOCAL_RANK" not in os.environ:  # torchrun itself: note how its workers end
        try:
            from pathlib import Path

            from mrcdiag.capture.exits import watch_worker_exits

            watch_worker_exits(Path(os.environ["MRCDIAG_RUN_DIR"]))
        except Exception:
            pass
        return
    try:
        from mrcdiag.capture.autoimport import arm

        arm()
    except Exception as exc:  # never stop the worker from starting
        print(f"mrcdiag: not recording this worker ({exc!r})", file=sys.stderr)


def _chain_next_sitecustomize() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    others = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_mrcdiag_boot()
try:
    _chain_next_sitecustomize()
except Exception as _exc:
    print(f"mrcdiag: the site's own sitecustomize failed ({_exc!r})", file=sys.stderr)
