"""Ranks' stacks at a hang: where each one is, and which ranks are in the same place.

Each rank's stacks.json (capture/stacks.py) holds every thread's frames; the training
thread's tell where the rank is. Ranks whose training threads stand on identical frames
form one group, so that thousands of ranks waiting in the same collective collapse to
one line and the rank stuck somewhere else stands out.
"""

from __future__ import annotations

from typing import Any

from mrcdiag.store.reader import RunData, rank_ranges

INNERMOST_FRAMES = 3
NATIVE_INNERMOST_FRAMES = 8  # C frames are many and short: a few more of them
# Frames of libraries (the interpreter's own modules, installed packages, mrcdiag's hook)
# are not where a user looks first: the innermost frame outside them is "theirs".
_LIBRARY_PARTS = (
    "/lib/python3",
    "site-packages",
    "dist-packages",
    "<frozen",
    "/mrcdiag/capture/",
)


def _main_frames(threads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    main = next((t for t in threads if t.get("main")), threads[0] if threads else None)
    return list(main.get("frames") or []) if main else []


def _frame_text(frame: dict[str, Any]) -> str:
    path = str(frame.get("file", "?"))
    return f"{path.rsplit('/', 1)[-1]}:{frame.get('line', 0)} {frame.get('function', '?')}"


def user_frame(frames: list[dict[str, Any]]) -> str | None:
    """The innermost frame in the user's own code (not a library's), as file:line name."""
    for frame in reversed(frames):
        if not any(part in str(frame.get("file", "")) for part in _LIBRARY_PARTS):
            return _frame_text(frame)
    return None


def where_each_rank_is(run: RunData, ranks: list[int]) -> dict[str, dict[str, Any]]:
    """For these ranks, where their training thread stood: its innermost frames and the
    innermost one in user code."""
    out = {}
    for rank in ranks:
        info = run.ranks.get(rank)
        if info is None or not info.stacks:
            continue
        frames = _main_frames(info.stacks)
        out[str(rank)] = {
            "user_frame": user_frame(frames),
            "innermost": [_frame_text(f) for f in frames[-INNERMOST_FRAMES:]][::-1],
        }
        if info.native_stacks:  # where Python called into C, and on down (py-spy)
            native = _main_frames(info.native_stacks)
            out[str(rank)]["native_innermost"] = [
                _native_text(f) for f in native[-NATIVE_INNERMOST_FRAMES:]
            ][::-1]
        elif info.native_error:
            out[str(rank)]["native_frames"] = f"not taken: {info.native_error}"
    return out


def _native_text(frame: dict[str, Any]) -> str:
    """A native frame as `function (library)`, a Python one as file:line function."""
    library = str(frame.get("library") or "")
    if library.endswith(".py") or not library:
        return _frame_text(frame)
    return f"{frame.get('function', '?')} ({library})"


def stack_groups(run: RunData) -> list[dict[str, Any]]:
    """Ranks grouped by identical training-thread stacks, the largest group first."""
    groups: dict[tuple, list[int]] = {}
    frames_of: dict[tuple, list[dict[str, Any]]] = {}
    for rank, info in sorted(run.ranks.items()):
        if not info.stacks:
            continue
        frames = _main_frames(info.stacks)
        key = tuple((f.get("file"), f.get("line"), f.get("function")) for f in frames)
        groups.setdefault(key, []).append(rank)
        frames_of[key] = frames
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[1][0]))
    return [
        {
            "ranks": rank_ranges(ranks),
            "count": len(ranks),
            "user_frame": user_frame(frames_of[key]),
            "innermost": [_frame_text(f) for f in frames_of[key][-INNERMOST_FRAMES:]][::-1],
        }
        for key, ranks in ordered
    ]
