"""Wrap torch.distributed the moment the user's script finishes `import torch`.

A meta-path finder waits for the top-level `torch` import, lets it run, then installs
the wrappers; nothing is imported early, so a script that sets CUDA_VISIBLE_DEVICES
before importing torch still works.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path
from typing import Any

from mrcdiag.log import warn_once

# The folder `mrcdiag launch` puts first on the workers' PYTHONPATH: its sitecustomize
# calls arm() in every torchrun worker of a launched job.
BOOT_DIR = Path(__file__).resolve().parent / "_boot"


def _after_torch(module: Any) -> None:
    try:
        from mrcdiag.capture.attach import attach_after_init
        from mrcdiag.capture.install import install

        install(module, on_init=attach_after_init)
    except Exception as exc:
        warn_once("install", f"cannot wrap torch.distributed ({exc!r}); not recording")


class _TorchFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        original_exec = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            original_exec(module)
            _after_torch(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def arm() -> None:
    if "torch" in sys.modules:
        _after_torch(sys.modules["torch"])
        return
    sys.meta_path.insert(0, _TorchFinder())
